"""`python -m lab up|status|down|env`: manual use of the lab (the `kumo lab` CLI wraps the same API)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from lab.core import DEFAULT_LISTEN, DEFAULT_PREFIX, DEFAULT_STATE_DIR, Lab
from lab.errors import LabError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab", description="Kumo all-in-one lab")
    ap.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR))
    ap.add_argument("--prefix", default=DEFAULT_PREFIX)
    ap.add_argument("--listen", default=None,
                    help=f"controller HOST:PORT (default: as started, else {DEFAULT_LISTEN})")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="create or repair the lab")
    up.add_argument("--hosts", type=int, default=2)
    up.add_argument("--no-services", action="store_true",
                    help="do not start controller/agents/storage node")
    up.add_argument("--storage-only", action="store_true",
                    help="start the storage node but no controller/agents")
    stp = sub.add_parser("status", help="show the lab's state")
    stp.add_argument("--json", action="store_true")
    sub.add_parser("down", help="remove everything the lab made")
    env = sub.add_parser("env", help="print shell exports for the kumo CLI")
    env.add_argument("--demo", action="store_true", help="the demo account instead of admin")
    a = ap.parse_args(argv)
    try:
        services = ("none" if getattr(a, "no_services", False) else
                    "storage" if getattr(a, "storage_only", False) else "auto")
        lab = Lab(a.state_dir, prefix=a.prefix, listen=a.listen, start_services=services)
        if a.cmd == "up":
            t = time.monotonic()
            status = lab.up(a.hosts)
            print(status.to_text())
            print(f"up in {time.monotonic() - t:.1f}s", file=sys.stderr)
            return 0 if status.ok else 1
        if a.cmd == "status":
            status = lab.status()
            print(json.dumps(status.to_dict(), indent=2) if a.json else status.to_text())
            return 0 if status.ok else 1
        if a.cmd == "down":
            t = time.monotonic()
            lab.down()
            print(f"down in {time.monotonic() - t:.1f}s", file=sys.stderr)
            return 0
        sys.stdout.write(lab.env(admin=not a.demo))
        return 0
    except LabError as e:
        print(f"error: {e.code}: {e.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
