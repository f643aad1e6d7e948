"""Disk layout math, boot config text, and a real (small, loop-free) disk assembly."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from images import disk
from images.errors import BuildError
from images.steps import run, step


def test_layout_is_aligned_and_fills_the_disk():
    lay = disk.plan_layout(128, 32)
    assert lay.boot_start == 2048 and lay.boot_sectors == 32 * 2048
    assert lay.root_start == 2048 + 32 * 2048 and lay.root_start % 2048 == 0
    assert lay.root_start + lay.root_sectors == lay.disk_sectors == 128 * 2048
    assert lay.boot_offset == 1048576 and lay.root_offset == 33 * 1048576
    script = lay.sfdisk_script()
    assert "label: dos" in script and "type=6, bootable" in script and f"start={lay.root_start}" in script


@pytest.mark.parametrize("disk_mib,boot_mib", [(20, 16), (128, 8)])
def test_layout_rejects_impossible_sizes(disk_mib, boot_mib):
    with pytest.raises(BuildError) as exc:
        disk.plan_layout(disk_mib, boot_mib)
    assert exc.value.step == "plan-layout"


def test_syslinux_cfg_boots_without_prompt_and_refuses_newlines():
    cfg = disk.syslinux_cfg("root=UUID=x console=ttyS0,115200")
    assert "PROMPT 0" in cfg and "APPEND root=UUID=x console=ttyS0,115200" in cfg and "LINUX /vmlinuz" in cfg
    with pytest.raises(BuildError):
        disk.syslinux_cfg("a\nLABEL evil")


def test_run_failure_names_the_step():
    with pytest.raises(BuildError) as exc:
        run("mkfs-boot", ["sh", "-c", "echo kaput >&2; exit 3"])
    assert exc.value.step == "mkfs-boot" and "kaput" in str(exc.value) and "exited 3" in str(exc.value)
    with pytest.raises(BuildError, match="not installed"):
        run("fetch-kernel", ["/nonexistent/tool-xyz"])


def test_step_wraps_python_errors():
    with pytest.raises(BuildError) as exc:
        with step("publish"):
            raise OSError(28, "No space left on device")
    assert exc.value.step == "publish" and "no space" in str(exc.value).lower()


TOOLS = ["sfdisk", "mkfs.vfat", "mcopy", "mdir", "syslinux", "mke2fs", "e2fsck", "debugfs"]


@pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS), reason="disk tools missing")
def test_assemble_small_disk(tmp_path):
    lay = disk.plan_layout(48, 16)
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/hello").write_text("hi\n")
    kern = tmp_path / "vmlinuz"
    kern.write_bytes(b"K" * 1000)
    cfg = tmp_path / "syslinux.cfg"
    cfg.write_text(disk.syslinux_cfg("quiet"))
    raw = tmp_path / "disk.raw"
    disk.assemble(raw, lay, {"vmlinuz": kern, "syslinux.cfg": cfg}, root,
                  "0e1b5ac4-5f2c-4d43-9c38-9f7a2b1c0d11", "testroot")
    table = json.loads(subprocess.run(["sfdisk", "-J", str(raw)], capture_output=True, check=True).stdout)
    parts = table["partitiontable"]["partitions"]
    assert [p["start"] for p in parts] == [lay.boot_start, lay.root_start]
    assert parts[0].get("bootable") is True
    data = raw.read_bytes()[:512]
    assert data[510:512] == b"\x55\xaa" and data[:440] != b"\0" * 440  # syslinux MBR code present
    listing = subprocess.run(["mdir", "-a", "-b", "-i", f"{raw}@@{lay.boot_offset}", "::/"], capture_output=True,
                             text=True, check=True).stdout.lower()
    assert "ldlinux.sys" in listing and "vmlinuz" in listing and "syslinux.cfg" in listing
    part = tmp_path / "root.ext4"
    with open(raw, "rb") as f, open(part, "wb") as g:
        f.seek(lay.root_offset)
        g.write(f.read(lay.root_sectors * 512))
    subprocess.run(["e2fsck", "-fn", str(part)], check=True, capture_output=True)
    cat = subprocess.run(["debugfs", "-R", "cat /etc/hello", str(part)], capture_output=True, text=True)
    assert cat.stdout == "hi\n"
    label = subprocess.run(["e2label", str(part)], capture_output=True, text=True).stdout.strip()
    assert label == "testroot"


@pytest.mark.skipif(shutil.which("apt-cache") is None, reason="apt-cache missing")
def test_missing_debian_package_fails_naming_the_step():
    from images.debs import closure

    with pytest.raises(BuildError) as exc:
        closure(["kumo-no-such-package-xyz"], "fetch-userland")
    assert exc.value.step == "fetch-userland"
