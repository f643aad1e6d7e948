"""kumo-tiny: a CirrOS-like image from Debian packages: the Debian cloud kernel, a busybox-static
initramfs that loads the virtual hardware's modules and grows the root, and a busybox + dropbear ext4
root whose init reads the NoCloud seed (see images/files/tiny/)."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import uuid
from pathlib import Path

from images import debs, disk, kmod
from images.errors import BuildError
from images.recipes import PKG_DIR, BuildContext, RecipeOutput
from images.steps import run, step

FILES = PKG_DIR / "files" / "tiny"
MODULES = ["virtio_pci", "virtio_blk", "virtio_net", "virtio_scsi", "sd_mod", "ata_piix", "sr_mod",
           "cdrom", "isofs", "ext4", "vfat", "nls_cp437", "nls_iso8859_1", "af_packet", "button", "evdev"]
OPTIONAL_MODULES = frozenset({"virtio_scsi", "vfat", "nls_cp437", "nls_iso8859_1", "af_packet", "button",
                              "evdev"})
USERLAND = ["busybox-static", "dropbear-bin", "e2fsprogs"]
ROOT_BINARIES = ["usr/sbin/dropbear", "usr/bin/dropbearkey", "usr/bin/dbclient"]
INITRAMFS_BINARIES = ["sbin/resize2fs"]
# Modes are set here, not trusted from the checkout (a tarball or package may drop exec bits).
EXECUTABLES = ("etc/init.d/rcS", "etc/init.d/rcK", "lib/kumo/boot.sh", "lib/kumo/disk-by-id.sh",
               "usr/bin/curl",
               "usr/share/udhcpc/default.script", "etc/acpi/PWRF/00000080")
DISK_MIB = 128
BOOT_MIB = 32


def _install_tree(src: Path, dst: Path) -> None:
    """Copy a files/ tree keeping modes (scripts are 0755 in git)."""
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src)
        target = dst / rel
        if p.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, target)
    for rel, mode in (("etc/shadow", 0o600),) + tuple((x, 0o755) for x in EXECUTABLES):
        if (dst / rel).exists():
            os.chmod(dst / rel, mode)


def _busybox_links(root: Path, busybox: str = "bin/busybox") -> None:
    """Symlink every applet to /bin/busybox at its usual place (busybox --list-full)."""
    out = run("install-busybox", [root / busybox, "--list-full"])
    for rel in out.split():
        link = root / rel
        if link.exists() or link.is_symlink() or rel == busybox:
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink("/" + busybox, link)


def _cpio_gz(tree: Path, out: Path) -> None:
    names = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
    proc = subprocess.run(["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"], cwd=tree,
                          input=("\n".join(["."] + names) + "\n").encode(), capture_output=True)
    if proc.returncode != 0:
        raise BuildError("pack-initramfs", proc.stderr.decode(errors="replace").strip())
    out.write_bytes(gzip.compress(proc.stdout, compresslevel=9, mtime=0))


class KumoTiny:
    name = "kumo-tiny"
    version = "1.0"
    min_ram_mib = 96
    ready_marker = "KUMO-READY"
    sources = ("recipes/tiny.py", "files/tiny")

    def build(self, ctx: BuildContext) -> RecipeOutput:
        work, log = ctx.work, ctx.log
        debs.require_root("check-privileges")
        with step("fetch-kernel", log):
            kroot, release, versions = debs.fetch_kernel(work)
        with step("fetch-userland", log):
            pkgs = debs.closure(USERLAND, "fetch-userland")
            userland = debs.download(pkgs, work / "debs-userland", "fetch-userland")
            stage = work / "stage"
            for deb in userland.values():
                debs.extract(deb, stage, "fetch-userland")
            versions.update({p: debs.version(d) for p, d in userland.items()})
        with step("build-initramfs", log):
            ird = work / "initramfs"
            for d in ("bin", "sbin", "dev", "proc", "sys", "newroot", "lib/modules", "etc"):
                (ird / d).mkdir(parents=True, exist_ok=True)
            shutil.copy2(stage / "bin/busybox", ird / "bin/busybox")
            shutil.copy2(FILES / "initramfs/init", ird / "init")
            os.chmod(ird / "init", 0o755)
            moddir = kroot / "lib/modules" / release
            order = kmod.resolve_in_tree(moddir, MODULES, OPTIONAL_MODULES)
            for rel in order:
                dst = ird / "lib/modules" / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(moddir / rel, dst)
            (ird / "lib/modules/load-order").write_text("\n".join(order) + "\n")
            for rel in INITRAMFS_BINARIES + debs.shared_libs(stage, INITRAMFS_BINARIES, "build-initramfs"):
                debs.copy_tree_file(stage, rel, ird)
            initrd = work / "initrd.img"
            _cpio_gz(ird, initrd)
            log(f"  initramfs {initrd.stat().st_size / 1e6:.1f} MB, modules: "
                + " ".join(kmod.module_name(m) for m in order))
        with step("build-rootfs", log):
            root = work / "rootfs"
            for d in ("bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "run", "tmp", "root/.ssh",
                      "var/lib/kumo", "var/log", "etc/dropbear", "srv/www", "mnt", "home"):
                (root / d).mkdir(parents=True, exist_ok=True)
            os.chmod(root / "tmp", 0o1777)
            os.chmod(root / "root", 0o700)
            shutil.copy2(stage / "bin/busybox", root / "bin/busybox")
            _busybox_links(root)
            for rel in ROOT_BINARIES + debs.shared_libs(stage, ROOT_BINARIES, "build-rootfs"):
                debs.copy_tree_file(stage, rel, root)
            _install_tree(FILES / "rootfs", root)
            (root / "etc/kumo-release").write_text(f"kumo-tiny {self.version} kernel {release}\n")
        with step("assemble-disk", log):
            root_uuid = str(uuid.uuid4())
            layout = disk.plan_layout(DISK_MIB, BOOT_MIB)
            cfg = work / "syslinux.cfg"
            cmdline = f"root=UUID={root_uuid} rootfstype=ext4 console=ttyS0,115200 quiet panic=10"
            cfg.write_text(disk.syslinux_cfg(cmdline))
            raw = work / "disk.raw"
            disk.assemble(raw, layout, {"vmlinuz": kroot / "boot" / f"vmlinuz-{release}",
                                        "initrd.img": initrd, "syslinux.cfg": cfg},
                          root, root_uuid, "kumo-root", log)
        with step("convert-qcow2", log):
            out = work / "image.qcow2"
            disk.convert_qcow2(raw, out)
        return RecipeOutput(qcow2=out, virtual_size=layout.disk_bytes, kernel_version=release,
                            root_device=f"UUID={root_uuid}", packages=versions)
