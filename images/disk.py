"""Bootable BIOS disk assembly without loop devices or mounts.

Layout (MBR, 512-byte sectors): partition 1 = FAT16 /boot holding syslinux, the kernel and the
initramfs (bootable flag); partition 2 = ext4 root, to the end of the disk. SeaBIOS runs the syslinux
mbr.bin, which chains to the active partition's syslinux, which loads the kernel named in syslinux.cfg.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from images.errors import BuildError
from images.steps import run

SECTOR = 512
MIB = 1024 * 1024
ALIGN_SECTORS = MIB // SECTOR  # partitions start on 1 MiB boundaries
SYSLINUX_MBR_CANDIDATES = ("/usr/lib/syslinux/mbr/mbr.bin", "/usr/lib/SYSLINUX/mbr.bin")
MBR_CODE_BYTES = 440  # boot code area; the partition table and disk id follow it
FAT16_MIN_MIB = 16


@dataclass(frozen=True)
class Layout:
    """Partition geometry, all in sectors."""

    disk_sectors: int
    boot_start: int
    boot_sectors: int
    root_start: int
    root_sectors: int

    @property
    def boot_offset(self) -> int:
        return self.boot_start * SECTOR

    @property
    def root_offset(self) -> int:
        return self.root_start * SECTOR

    @property
    def disk_bytes(self) -> int:
        return self.disk_sectors * SECTOR

    def sfdisk_script(self) -> str:
        # type 6 = FAT16 (>32 MiB), 83 = Linux; boot partition is the active one for mbr.bin
        return ("label: dos\nunit: sectors\n"
                f"start={self.boot_start}, size={self.boot_sectors}, type=6, bootable\n"
                f"start={self.root_start}, size={self.root_sectors}, type=83\n")


def plan_layout(disk_mib: int, boot_mib: int) -> Layout:
    """Boot partition at 1 MiB of boot_mib, root from the next MiB boundary to the disk's end."""
    if boot_mib < FAT16_MIN_MIB:
        raise BuildError("plan-layout", f"boot partition {boot_mib} MiB is below the FAT16 minimum {FAT16_MIN_MIB}")
    if disk_mib < boot_mib + 2 + 8:
        raise BuildError("plan-layout", f"disk {disk_mib} MiB too small for a {boot_mib} MiB boot partition")
    disk = disk_mib * ALIGN_SECTORS
    boot_start = ALIGN_SECTORS
    boot_sectors = boot_mib * ALIGN_SECTORS
    root_start = boot_start + boot_sectors
    return Layout(disk, boot_start, boot_sectors, root_start, disk - root_start)


def syslinux_cfg(append: str, kernel: str = "/vmlinuz", initrd: str = "/initrd.img") -> str:
    """syslinux.cfg that boots at once (no prompt), with its own output on the first serial port."""
    for value in (append, kernel, initrd):
        if "\n" in value or "\r" in value:
            raise BuildError("boot-config", "newline in a syslinux.cfg value")
    return ("SERIAL 0 115200\nDEFAULT kumo\nPROMPT 0\nTIMEOUT 1\n"
            f"LABEL kumo\n  LINUX {kernel}\n  INITRD {initrd}\n  APPEND {append}\n")


def _mbr_bin() -> str:
    for p in SYSLINUX_MBR_CANDIDATES:
        if os.path.exists(p):
            return p
    raise BuildError("write-mbr", "syslinux mbr.bin not found (install the syslinux-common package)")


def assemble(raw: Path, layout: Layout, boot_files: dict[str, Path], rootdir: Path, root_uuid: str,
             root_label: str, log=None) -> None:
    """Write the whole raw disk image: partition table, MBR code, FAT16 + syslinux, ext4 from rootdir."""
    def say(msg: str) -> None:
        if log:
            log(msg)

    say(f"[partition] {layout.disk_bytes // MIB} MiB disk, boot {layout.boot_sectors // ALIGN_SECTORS} MiB")
    try:
        with open(raw, "wb") as f:
            f.truncate(layout.disk_bytes)
    except OSError as e:
        raise BuildError("create-disk", str(e)) from e
    run("partition", ["sfdisk", "--no-reread", "--no-tell-kernel", "-q", raw],
        input=layout.sfdisk_script().encode())
    run("write-mbr", ["dd", f"if={_mbr_bin()}", f"of={raw}", f"bs={MBR_CODE_BYTES}", "count=1",
                      "conv=notrunc", "status=none"])
    say("[mkfs-boot] FAT16 + syslinux")
    run("mkfs-boot", ["mkfs.vfat", "-F", "16", "-n", "KUMOBOOT", "--offset", str(layout.boot_start),
                      raw, str(layout.boot_sectors * SECTOR // 1024)])
    target = f"{raw}@@{layout.boot_offset}"
    for name, src in boot_files.items():
        run("copy-boot-files", ["mcopy", "-o", "-i", target, src, f"::/{name}"])
    run("install-syslinux", ["syslinux", "--offset", str(layout.boot_offset), "--install", raw])
    say("[mkfs-root] ext4 from the staged tree")
    run("mkfs-root", ["mke2fs", "-q", "-F", "-t", "ext4", "-L", root_label, "-U", root_uuid,
                      "-d", rootdir, "-E", f"offset={layout.root_offset}", raw,
                      f"{layout.root_sectors * SECTOR // 1024}k"])


def convert_qcow2(raw: Path, out: Path) -> None:
    run("convert-qcow2", ["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", "-c", raw, out])
