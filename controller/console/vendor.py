"""The console's third-party browser code, vendored: each package pinned in vendor.json by version,
the npm registry's tarball URL and its sha512 integrity, and the sha256 of every file taken from
it. The files are committed under static/vendor/<name>-<version>/, so the controller serves them
with no network and no build on the machine (sites may be offline).

    .venv/bin/python -m controller.console.vendor           # fetch, verify, (re)write the files
    .venv/bin/python -m controller.console.vendor --check   # verify the committed files only

To upgrade a package: change its version, tarball and integrity in vendor.json (`npm view
uplot@X dist.tarball dist.integrity`), empty its "files" hashes, run the fetch, review the
diff, and put the printed sha256 values in vendor.json.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import sys
import tarfile
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOCK = HERE / "vendor.json"
VENDOR = HERE / "static" / "vendor"


def _packages() -> list[dict]:
    return json.loads(LOCK.read_text())["packages"]


def target_dir(pkg: dict) -> Path:
    return VENDOR / f"{pkg['name']}-{pkg['version']}"


def check() -> list[str]:
    """Problems with the committed files (empty: every file is there with its pinned sha256)."""
    problems = []
    for pkg in _packages():
        for name, sha in pkg["files"].items():
            path = target_dir(pkg) / Path(name).name
            if not path.is_file():
                problems.append(f"{path}: missing")
            elif hashlib.sha256(path.read_bytes()).hexdigest() != sha:
                problems.append(f"{path}: sha256 differs from vendor.json")
    return problems


def fetch() -> None:
    for pkg in _packages():
        with urllib.request.urlopen(pkg["tarball"], timeout=60) as r:
            data = r.read()
        algo, _, want = pkg["integrity"].partition("-")
        if algo != "sha512" or base64.b64encode(hashlib.sha512(data).digest()).decode() != want:
            raise SystemExit(f"{pkg['name']}: the tarball does not match its pinned integrity")
        out = target_dir(pkg)
        out.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for name, sha in pkg["files"].items():
                member = tar.extractfile(name)  # a name from vendor.json, never from the tar
                if member is None:
                    raise SystemExit(f"{pkg['name']}: {name} is not a file in the tarball")
                content = member.read()
                got = hashlib.sha256(content).hexdigest()
                if sha and got != sha:
                    raise SystemExit(f"{pkg['name']}: {name} sha256 {got}, pinned {sha}")
                (out / Path(name).name).write_bytes(content)
                print(f"{out / Path(name).name}: sha256 {got}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="verify the committed files only")
    args = ap.parse_args(argv)
    if not args.check:
        fetch()
    problems = check()
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
