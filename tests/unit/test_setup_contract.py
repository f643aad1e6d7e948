"""The set-up contract: README's two commands, .ci/run running exactly the test command, Vagrantfile."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)\n\s*```", setup, flags=re.S)


def test_readme_gives_exactly_two_setup_commands():
    commands = [c.strip() for c in _readme_commands()]
    assert commands == ["bash deploy/install.sh", "bash deploy/test.sh"]
    for command in commands:
        assert (ROOT / command.split()[1]).is_file()


def test_ci_runs_the_readme_test_command_and_nothing_else():
    lines = [l for l in (ROOT / ".ci/run").read_text().splitlines()
             if l.strip() and not l.startswith("#")]
    assert lines[-1] == "exec bash deploy/test.sh"
    assert all(l.startswith(("set ", "cd ")) for l in lines[:-1])


@pytest.mark.skipif(shutil.which("vagrant") is None, reason="vagrant is not installed")
def test_vagrantfile_validates():
    subprocess.run(["vagrant", "validate"], cwd=ROOT, check=True, timeout=120,
                   capture_output=True)
