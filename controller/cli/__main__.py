"""`python -m controller.cli` runs the kumo CLI (same as the `kumo` console script)."""
from .main import main

main()
