"""The in-process nft backend (libnftables through ctypes), kept importable under its old name:
it lives in agent/firewall/load.py, the one loader of every table the agent owns."""
from agent.firewall.load import LibNft, available

__all__ = ["LibNft", "available"]
