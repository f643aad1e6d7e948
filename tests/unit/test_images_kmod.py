"""Kernel module dependency resolution from modules.dep and modules.builtin."""

from __future__ import annotations

import pytest

from images.errors import BuildError
from images.kmod import module_name, parse_builtin, parse_modules_dep, resolve

DEP = """\
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/scsi/sr_mod.ko: kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko kernel/drivers/cdrom/cdrom.ko
kernel/drivers/scsi/scsi_mod.ko: kernel/drivers/scsi/scsi_common.ko
kernel/drivers/scsi/scsi_common.ko:
kernel/drivers/cdrom/cdrom.ko:
kernel/fs/isofs/isofs.ko: kernel/drivers/cdrom/cdrom.ko
kernel/arch/x86/crypto/crc32c-intel.ko.xz:
"""
BUILTIN = "kernel/fs/ext4/ext4.ko\nkernel/fs/jbd2/jbd2.ko\n"


def test_module_name_normalises():
    assert module_name("kernel/arch/x86/crypto/crc32c-intel.ko.xz") == "crc32c_intel"
    assert module_name("kernel/drivers/block/virtio_blk.ko") == "virtio_blk"


def test_resolve_orders_dependencies_first_and_once():
    order = resolve(["virtio_pci", "virtio_blk", "sr_mod", "isofs"], parse_modules_dep(DEP), set())
    names = [module_name(p) for p in order]
    assert len(names) == len(set(names))
    for mod, deps in {"virtio_pci": ["virtio", "virtio_ring", "virtio_pci_legacy_dev"],
                      "virtio_blk": ["virtio", "virtio_ring"], "sr_mod": ["scsi_mod", "scsi_common", "cdrom"],
                      "isofs": ["cdrom"], "scsi_mod": ["scsi_common"]}.items():
        for d in deps:
            assert names.index(d) < names.index(mod), (d, mod)


def test_builtin_modules_need_nothing_and_unknown_ones_fail():
    deps, builtin = parse_modules_dep(DEP), parse_builtin(BUILTIN)
    assert resolve(["ext4"], deps, builtin) == []
    assert resolve(["crc32c-intel"], deps, builtin) == ["kernel/arch/x86/crypto/crc32c-intel.ko.xz"]
    with pytest.raises(BuildError) as exc:
        resolve(["no_such_mod"], deps, builtin)
    assert exc.value.step == "resolve-modules"
    assert resolve(["no_such_mod"], deps, builtin, optional=frozenset({"no_such_mod"})) == []


def test_dependency_cycle_is_reported():
    dep = "a.ko: b.ko\nb.ko: a.ko\n"
    with pytest.raises(BuildError, match="cycle"):
        resolve(["a"], parse_modules_dep(dep), set())


def test_stage_realpath_keeps_absolute_symlinks_inside_the_stage(tmp_path):
    import os

    from images.debs import stage_realpath

    (tmp_path / "lib/x86_64-linux-gnu").mkdir(parents=True)
    (tmp_path / "lib/x86_64-linux-gnu/ld-2.36.so").write_text("loader")
    (tmp_path / "lib64").mkdir()
    os.symlink("/lib/x86_64-linux-gnu/ld-2.36.so", tmp_path / "lib64/ld-linux-x86-64.so.2")
    os.symlink("../lib/x86_64-linux-gnu", tmp_path / "lib64/rel")
    assert stage_realpath(tmp_path, "lib64/ld-linux-x86-64.so.2") == tmp_path / "lib/x86_64-linux-gnu/ld-2.36.so"
    assert stage_realpath(tmp_path, "/lib64/rel/ld-2.36.so") == tmp_path / "lib/x86_64-linux-gnu/ld-2.36.so"
