#!/usr/bin/env python3
"""Render one of Kumo's /etc/kumo/*.env files from its documented template (deploy/etc/ROLE.env),
keeping what the file on disk already says. Standard library only: it runs under the system's
python3 before /opt/kumo/venv exists.

Template format (systemd EnvironmentFile syntax):
  - a comment block documents each setting, then one line `KEY=VALUE` (set) or `#KEY=VALUE`
    (commented out: the setting's default, shown; the program's own default applies);
  - a value containing `{secret}` is a generated secret: on first install `{secret}` becomes a
    fresh random token; once the file exists the value on disk is kept, never regenerated.
    Those values, every *TOKEN key and the password of any URL are masked by --print.

Precedence for each KEY, highest first:
  1. --set KEY=VALUE     (an explicit option of the role command; written uncommented)
  2. the file on disk    (a KEY=VALUE line already uncommented there: the operator's or an
                          earlier install's value, secrets included)
  3. --default KEY=VALUE (the role's default for a fresh install, e.g. the agent's
                          KUMO_AGENT_ALLOW_ROOT_NETNS=true)
  4. the template line   (commented default, or a set value; `{secret}` generated)
Uncommented keys on disk that the template does not know are kept at the end, under a marker.

Same inputs + same file on disk -> the same bytes out: running a role twice changes nothing.

Usage: envfile.py TEMPLATE OUTPUT [--set K=V]... [--default K=V]... [--print] [--mode 600]
  --print: write nothing; print the result with every secret masked.
"""
from __future__ import annotations

import argparse
import os
import re
import secrets
import sys
import tempfile

SETTING = re.compile(r"^(?P<hash>#?)(?P<key>[A-Z][A-Z0-9_]*)=(?P<value>.*)$")
SECRET = "{secret}"
URL_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@")
KEPT_MARKER = "# --- kept from the previous file (not in this release's template) ---"


def parse(text: str) -> dict[str, str]:
    """The uncommented KEY=VALUE lines of an env file."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = SETTING.match(line)
        if m and not m["hash"]:
            out[m["key"]] = m["value"]
    return out


def template_keys(text: str) -> list[str]:
    """Every setting a template documents, set or commented, in order."""
    return [m["key"] for m in map(SETTING.match, text.splitlines()) if m]


def render(template: str, existing: dict[str, str], sets: dict[str, str],
           defaults: dict[str, str], mask: bool = False) -> str:
    out: list[str] = []
    known: set[str] = set()
    for line in template.splitlines():
        m = SETTING.match(line)
        if not m:
            out.append(line)
            continue
        key, value, commented = m["key"], m["value"], bool(m["hash"])
        known.add(key)
        secret = SECRET in value or key.endswith("TOKEN")
        if key in sets:
            line = f"{key}={_masked(sets[key], secret, 'given on the command line') if mask else sets[key]}"
        elif key in existing:
            line = f"{key}={_masked(existing[key], secret, 'kept from the file on disk') if mask else existing[key]}"
        elif key in defaults:
            line = f"{key}={defaults[key]}"
        elif SECRET in value:
            new = "<secret: generated at install>" if mask else secrets.token_urlsafe(32)
            line = f"{'#' if commented else ''}{key}={value.replace(SECRET, new)}"
        out.append(line)
    extra = [k for k in existing if k not in known and k not in sets]
    extra += [k for k in sets if k not in known]
    if extra:
        out += ["", KEPT_MARKER]
        for k in extra:
            v = sets[k] if k in sets else existing[k]
            out.append(f"{k}={_masked(v, k.endswith('TOKEN'), 'kept') if mask else v}")
    return "\n".join(out) + "\n"


def _masked(value: str, secret: bool, why: str) -> str:
    """For --print: a secret value hidden, and the password of any URL in a value."""
    if secret and value:
        if "://" in value:
            return URL_PASSWORD.sub(rf"\1<secret: {why}>@", value)
        return f"<secret: {why}>"
    return URL_PASSWORD.sub(rf"\1<secret: {why}>@", value)


def _pairs(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Z][A-Z0-9_]*", key):
            raise SystemExit(f"not KEY=VALUE: {item!r}")
        if "\n" in value:
            raise SystemExit(f"{key}: a value cannot span lines")
        out[key] = value
    return out


def write_atomic(path: str, data: str, mode: int) -> bool:
    """Write `data` to `path` (mode applied before any byte is written); False if unchanged."""
    try:
        with open(path) as f:
            if f.read() == data:
                os.chmod(path, mode)
                return False
    except FileNotFoundError:
        pass
    d = os.path.dirname(path) or "."
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".kumo-env.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("template")
    ap.add_argument("output")
    ap.add_argument("--set", action="append", default=[], dest="sets")
    ap.add_argument("--default", action="append", default=[], dest="defaults")
    ap.add_argument("--print", action="store_true", dest="print_only")
    ap.add_argument("--mode", default="600")
    a = ap.parse_args(argv)
    with open(a.template) as f:
        template = f.read()
    try:
        with open(a.output) as f:
            existing = parse(f.read())
    except FileNotFoundError:
        existing = {}
    text = render(template, existing, _pairs(a.sets), _pairs(a.defaults), mask=a.print_only)
    if a.print_only:
        sys.stdout.write(text)
        return 0
    changed = write_atomic(a.output, text, int(a.mode, 8))
    print(f"{a.output}: {'written' if changed else 'unchanged'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
