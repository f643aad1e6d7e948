"""How tests/lab/deploy_support.py reads an installed systemd unit to start a service as systemd
would (ExecStart with $VAR expansion, Environment=, EnvironmentFile= with its optional `-`, User=,
Group=, WorkingDirectory=, StateDirectory=): on the real units of deploy/systemd and Debian's
libvirtd.service syntax, in a scratch root."""
from __future__ import annotations

import grp
import os
import pwd
import shutil
from pathlib import Path

from tests.lab import deploy_support as ds

REPO = Path(__file__).resolve().parents[2]

LIBVIRTD_UNIT = """[Unit]
Description=Virtualization daemon
[Service]
Type=notify
Environment=LIBVIRTD_ARGS="--timeout 120"
EnvironmentFile=-/etc/default/libvirtd
ExecStart=/usr/sbin/libvirtd $LIBVIRTD_ARGS
[Install]
WantedBy=multi-user.target
"""


def _root(tmp_path: Path) -> ds.Root:
    root = ds.Root(tmp_path / "base", tmp_path / "work", "unused")
    (root.merged / "etc/systemd/system").mkdir(parents=True)
    (root.merged / "etc/kumo").mkdir(parents=True)
    me, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    (root.merged / "etc/passwd").write_text(f"{me}:x:{os.getuid()}:{os.getgid()}::/:/bin/sh\n")
    (root.merged / "etc/group").write_text(f"{group}:x:{os.getgid()}:\n")
    return root


def test_env_file_syntax():
    env = ds.parse_env_file("# comment\n\nA=1\n#B=2\nC=\"x y\"\nD='z'\nE=a=b\n")
    assert env == {"A": "1", "C": "x y", "D": "z", "E": "a=b"}


def test_controller_unit_as_installed(tmp_path):
    root = _root(tmp_path)
    text = (REPO / "deploy/systemd/kumo-controller.service").read_text()
    me, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    # the unit's user, made the scratch root's only user (kumo on a real host)
    text = text.replace("User=kumo", f"User={me}").replace("Group=kumo", f"Group={group}")
    (root.merged / "etc/systemd/system/kumo-controller.service").write_text(text)
    (root.merged / "etc/kumo/controller.env").write_text("#KUMO_X=1\nKUMO_LISTEN=0.0.0.0:8787\n")
    argv, env, userspec, cwd = ds.unit_command(root, "kumo-controller.service")
    assert argv == ["/opt/kumo/venv/bin/python", "-m", "controller"]
    assert env == {"KUMO_LISTEN": "0.0.0.0:8787"}
    assert cwd == "/var/lib/kumo/controller"
    assert userspec == (f"{me}:{group}" if me != "root" else None)
    state = root.merged / "var/lib/kumo/controller"
    assert state.is_dir() and (state.stat().st_mode & 0o777) == 0o750
    shutil.rmtree(tmp_path / "work")


def test_missing_environment_file_is_an_error_unless_optional(tmp_path):
    root = _root(tmp_path)
    (root.merged / "etc/systemd/system/libvirtd.service").write_text(LIBVIRTD_UNIT)
    argv, env, userspec, _ = ds.unit_command(root, "libvirtd.service")
    assert argv == ["/usr/sbin/libvirtd", "--timeout", "120"] and userspec is None
    (root.merged / "etc/default").mkdir()
    (root.merged / "etc/default/libvirtd").write_text('LIBVIRTD_ARGS=""\n')
    assert ds.unit_command(root, "libvirtd.service")[0] == ["/usr/sbin/libvirtd"]
    (root.merged / "etc/systemd/system/x.service").write_text(
        "[Service]\nEnvironmentFile=/etc/kumo/none.env\nExecStart=/bin/true\n")
    try:
        ds.unit_command(root, "x.service")
    except AssertionError as e:
        assert "none.env" in str(e)
    else:
        raise AssertionError("a missing EnvironmentFile without '-' must fail")
