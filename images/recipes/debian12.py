"""debian-12: Debian 12 (bookworm) with the real cloud-init, built by mmdebstrap from Debian packages,
root by UUID on ext4, /boot files on the FAT16 syslinux partition (see images/files/debian-12/)."""

from __future__ import annotations

import os
import shutil
import uuid
from images import debs, disk
from images.errors import BuildError
from images.recipes import PKG_DIR, BuildContext, RecipeOutput
from images.steps import run, step

FILES = PKG_DIR / "files" / "debian-12"
PACKAGES = ["linux-image-cloud-amd64", "initramfs-tools", "systemd-sysv", "udev", "dbus", "cloud-init",
            "cloud-guest-utils", "fdisk", "openssh-server", "ifupdown", "iproute2", "netbase", "sudo",
            "procps", "e2fsprogs", "python3-cffi-backend", "isc-dhcp-client", "resolvconf", "ca-certificates",
            # the firewall tools a real guest has (and the lab NATs a namespace inside the guest)
            "nftables"]
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY = "http://deb.debian.org/debian-security"
DISK_MIB = 2048
BOOT_MIB = 128
# Leave documentation out of the image (copyright files stay).
DPKG_OPTS = ["path-exclude=/usr/share/man/*", "path-exclude=/usr/share/doc/*",
             "path-include=/usr/share/doc/*/copyright", "path-exclude=/usr/share/locale/*",
             "path-exclude=/usr/share/info/*"]


def mirrors() -> list[str]:
    main = os.environ.get("KUMO_DEBIAN_MIRROR", DEFAULT_MIRROR)
    sec = os.environ.get("KUMO_DEBIAN_SECURITY_MIRROR", DEFAULT_SECURITY)
    for m in (main, sec):
        if not m.startswith(("http://", "https://", "file:/")) or any(c.isspace() for c in m):
            raise BuildError("debootstrap", f"bad mirror URL {m!r}")
    return [f"deb {main} {SUITE} main", f"deb {main} {SUITE}-updates main", f"deb {sec} {SUITE}-security main"]


class Debian12:
    name = "debian-12"
    version = "1.0"
    min_ram_mib = 256
    ready_marker = "KUMO-READY"
    sources = ("recipes/debian12.py", "files/debian-12")

    def build(self, ctx: BuildContext) -> RecipeOutput:
        work, log = ctx.work, ctx.log
        debs.require_root("check-privileges")
        root_uuid = str(uuid.uuid4())
        tree = work / "rootfs"
        with step("prepare-overlay", log):
            late = work / "overlay-late"
            (late / "etc").mkdir(parents=True)
            (late / "etc/fstab").write_text(f"UUID={root_uuid} / ext4 errors=remount-ro 0 1\n")
        for p in (FILES / "overlay", late, tree):
            if any(c.isspace() for c in str(p)):  # mmdebstrap splits hook arguments on whitespace
                raise BuildError("debootstrap", f"path with whitespace not supported: {p}")
        argv = ["mmdebstrap", "--mode=root", "--variant=minbase", "--format=directory",
                f"--include={','.join(PACKAGES)}",
                *[f"--dpkgopt={o}" for o in DPKG_OPTS],
                f"--setup-hook=sync-in {FILES / 'overlay'} /",
                f"--customize-hook=sync-in {late} /",
                # a fresh machine-id per instance; no host-specific apt lists in the image
                "--customize-hook=echo uninitialized > \"$1/etc/machine-id\"",
                "--customize-hook=chmod 755 \"$1/usr/local/sbin/kumo-ready\"",
                # every instance makes its own SSH host keys (cloud-init); no build host resolver
                "--customize-hook=rm -f \"$1\"/etc/ssh/ssh_host_*_key \"$1\"/etc/ssh/ssh_host_*_key.pub",
                "--customize-hook=ln -sf ../run/resolvconf/resolv.conf \"$1/etc/resolv.conf\"",
                SUITE, str(tree), *mirrors()]
        log("[debootstrap] mmdebstrap (about a minute)")
        with step("debootstrap", log):
            run("debootstrap", argv, timeout=3600)
        with step("collect-kernel", log):
            kernels = sorted((tree / "boot").glob("vmlinuz-*"))
            if len(kernels) != 1:
                raise BuildError("collect-kernel", f"expected one kernel in /boot, found {[k.name for k in kernels]}")
            release = kernels[0].name.removeprefix("vmlinuz-")
            initrd = tree / "boot" / f"initrd.img-{release}"
            if not initrd.exists():
                raise BuildError("collect-kernel", f"initrd.img-{release} was not generated")
            versions = {}
            out = run("collect-kernel", ["dpkg-query", f"--admindir={tree}/var/lib/dpkg", "-W",
                                         "-f", "${Package}\t${Version}\n", *PACKAGES])
            for line in out.splitlines():
                p, _, v = line.partition("\t")
                versions[p] = v
        with step("assemble-disk", log):
            layout = disk.plan_layout(DISK_MIB, BOOT_MIB)
            cfg = work / "syslinux.cfg"
            cfg.write_text(disk.syslinux_cfg(f"root=UUID={root_uuid} ro console=ttyS0,115200 quiet"))
            raw = work / "disk.raw"
            disk.assemble(raw, layout, {"vmlinuz": kernels[0], "initrd.img": initrd, "syslinux.cfg": cfg},
                          tree, root_uuid, "debian-root", log)
            shutil.rmtree(tree, ignore_errors=True)
        with step("convert-qcow2", log):
            out_img = work / "image.qcow2"
            disk.convert_qcow2(raw, out_img)
        return RecipeOutput(qcow2=out_img, virtual_size=layout.disk_bytes, kernel_version=release,
                            root_device=f"UUID={root_uuid}", packages=versions)
