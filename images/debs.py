"""Fetching Debian packages with apt (the only network the builder uses) and unpacking them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from images.errors import BuildError
from images.steps import run

_APT_OPTS = ["-o", "APT::Sandbox::User=root", "-q"]


def ensure_apt_lists(probe: str = "linux-image-cloud-amd64") -> None:
    """Run `apt-get update` once when the package lists do not know `probe` (fresh machines)."""
    out = run("apt-update", ["apt-cache", "policy", probe])
    if "Candidate:" in out and "Candidate: (none)" not in out:
        return
    run("apt-update", ["apt-get", *_APT_OPTS, "update"], timeout=900)


def require_root(step: str) -> None:
    """Image trees must be owned by root inside the guest; mke2fs -d copies the builder's ids."""
    if os.geteuid() != 0:
        raise BuildError(step, "image builds must run as root (file ownership in the image, mmdebstrap)")


def closure(packages: list[str], step: str = "resolve-packages") -> list[str]:
    """Packages plus their recursive Depends/Pre-Depends (real packages only), per the host's apt."""
    out = run(step, ["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
                     "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", *packages])
    names = []
    for line in out.splitlines():
        if line and not line.startswith(" ") and not line.startswith("<"):
            names.append(line.strip())
    missing = [p for p in packages if p not in names]
    if missing:
        raise BuildError(step, f"apt does not know package(s): {', '.join(missing)}")
    return sorted(set(names))


def download(packages: list[str], dest: Path, step: str = "download-packages") -> dict[str, Path]:
    """apt-get download into dest; returns {package: .deb path}."""
    dest.mkdir(parents=True, exist_ok=True)
    run(step, ["apt-get", *_APT_OPTS, "download", *packages], cwd=dest)
    debs: dict[str, Path] = {}
    for deb in dest.glob("*.deb"):
        debs[deb.name.split("_", 1)[0]] = deb
    missing = [p for p in packages if p not in debs]
    if missing:
        raise BuildError(step, f"apt-get download produced no .deb for: {', '.join(missing)}")
    return debs


def version(deb: Path) -> str:
    return run("inspect-package", ["dpkg-deb", "-f", deb, "Version"]).strip()


def depends(deb: Path) -> str:
    return run("inspect-package", ["dpkg-deb", "-f", deb, "Depends"]).strip()


def extract(deb: Path, root: Path, step: str = "extract-packages") -> None:
    root.mkdir(parents=True, exist_ok=True)
    run(step, ["dpkg-deb", "-x", deb, root])


def fetch_kernel(work: Path, meta: str = "linux-image-cloud-amd64") -> tuple[Path, str, dict[str, str]]:
    """Download the kernel meta package and the versioned image it depends on, unpack both.
    Returns (unpacked root, kernel release e.g. '6.1.0-56-cloud-amd64', {package: version})."""
    ensure_apt_lists(meta)
    debdir = work / "debs-kernel"
    meta_deb = download([meta], debdir, "fetch-kernel")[meta]
    image_pkgs = [d.split()[0] for d in depends(meta_deb).split(",") if d.strip().startswith("linux-image-")]
    if not image_pkgs:
        raise BuildError("fetch-kernel", f"{meta} does not depend on a linux-image-* package")
    debs = download(image_pkgs, debdir, "fetch-kernel")
    root = work / "kernel-root"
    for deb in debs.values():
        extract(deb, root, "fetch-kernel")
    releases = sorted(p.name for p in (root / "lib/modules").iterdir()) if (root / "lib/modules").exists() else []
    if len(releases) != 1:
        raise BuildError("fetch-kernel", f"expected one kernel release in the package, found {releases}")
    release = releases[0]
    if not (root / "boot" / f"vmlinuz-{release}").exists():
        raise BuildError("fetch-kernel", f"vmlinuz-{release} missing from {image_pkgs[0]}")
    # modules.dep is made by the package's postinst, which we do not run: make it here.
    run("fetch-kernel", ["depmod", "-b", root, release])
    versions = {meta: version(meta_deb), **{p: version(d) for p, d in debs.items()}}
    return root, release, versions


def stage_realpath(stage: Path, rel: str) -> Path:
    """Resolve rel inside the stage like a chroot would: absolute symlink targets stay in the stage."""
    parts = [p for p in rel.strip("/").split("/") if p]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = stage.joinpath(*resolved, part)
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                raise BuildError("resolve-libraries", f"symlink loop at {rel}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        resolved.append(part)
    return stage.joinpath(*resolved)


def copy_tree_file(src_root: Path, rel: str, dst_root: Path) -> None:
    """Copy src_root/rel to dst_root/rel as a regular file (symlinks followed inside src_root)."""
    src = stage_realpath(src_root, rel)
    dst = dst_root / rel.lstrip("/")
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        os.unlink(dst)
    shutil.copy2(src, dst)


def shared_libs(stage: Path, binaries: list[str], step: str = "resolve-libraries") -> list[str]:
    """Shared libraries (paths relative to stage, incl. the dynamic loader) that the binaries need,
    resolved with the staged glibc's own loader so the host's libraries never leak in."""
    loader_rel = "lib64/ld-linux-x86-64.so.2"
    loader = stage_realpath(stage, loader_rel)
    if not loader.is_file():
        raise BuildError(step, f"{loader_rel} missing from the staged libc6")
    libpath = ":".join(str(stage / d) for d in ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"))
    found: set[str] = {loader_rel}
    for b in binaries:
        out = run(step, [loader, "--library-path", libpath, "--list", stage / b.lstrip("/")])
        for line in out.splitlines():
            line = line.strip()
            if "=>" in line:
                target = line.split("=>", 1)[1].strip().split(" (", 1)[0]
                if "ld-linux" in line.split("=>", 1)[0]:
                    continue  # the loader itself, already in the set
                if target == "not found" or not target:
                    raise BuildError(step, f"{b}: library {line.split()[0]} not found in staged packages")
                if not os.path.abspath(target).startswith(os.path.abspath(stage) + "/"):
                    raise BuildError(step, f"{b}: {target} resolved outside the staged packages")
                # keep the soname path (the symlink name), not the versioned real file
                found.add(str(Path(os.path.abspath(target)).relative_to(os.path.abspath(stage))))
    return sorted(found)
