"""`python -m images build NAME [--force] [--cache-dir DIR]` and `python -m images list`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from images.builder import BuildError, build, cache_dir_default, cached_manifest, list_recipes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m images", description="Build Kumo machine images")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build an image (or reuse the cached one)")
    b.add_argument("name")
    b.add_argument("--force", action="store_true", help="rebuild even if the cache is current")
    b.add_argument("--cache-dir", type=Path)
    ls = sub.add_parser("list", help="list recipes and cached images")
    ls.add_argument("--cache-dir", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "list":
        cache = args.cache_dir or cache_dir_default()
        for name in list_recipes():
            m = cached_manifest(name, cache)
            state = f"cached {m.path} ({m.size / 1e6:.1f} MB, built {m.build_time})" if m else "not built"
            print(f"{name}\t{state}")
        return 0
    try:
        m = build(args.name, cache_dir=args.cache_dir, force=args.force,
                  log=lambda s: print(s, file=sys.stderr, flush=True))
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(m.to_json(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
