"""Kernel module selection: resolve a module list to .ko files in load order from modules.dep,
skipping modules the kernel config builds in."""

from __future__ import annotations

from pathlib import Path

from images.errors import BuildError


def _norm(name: str) -> str:
    return name.replace("-", "_")


def module_name(ko_path: str) -> str:
    """'kernel/drivers/block/virtio_blk.ko(.xz)' -> 'virtio_blk'."""
    base = ko_path.rsplit("/", 1)[-1]
    for ext in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(ext):
            base = base[: -len(ext)]
            break
    return _norm(base)


def parse_modules_dep(text: str) -> dict[str, tuple[str, list[str]]]:
    """modules.dep text -> {module name: (path, [dependency paths])}."""
    out: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        path, _, deps = line.partition(":")
        out[module_name(path.strip())] = (path.strip(), deps.split())
    return out


def parse_builtin(text: str) -> set[str]:
    """modules.builtin (one path per line) -> module names built into the kernel."""
    return {module_name(line.strip()) for line in text.splitlines() if line.strip()}


def resolve(wanted: list[str], deps: dict[str, tuple[str, list[str]]], builtin: set[str],
            optional: frozenset[str] = frozenset()) -> list[str]:
    """Module paths to load, dependencies first, each once. Built-in modules need nothing.
    A wanted module that is neither built in nor in modules.dep is an error unless optional."""
    by_path = {path: name for name, (path, _) in deps.items()}
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str, stack: tuple[str, ...]) -> None:
        if name in seen:
            return
        if name in stack:
            raise BuildError("resolve-modules", f"dependency cycle: {' -> '.join(stack + (name,))}")
        path, dep_paths = deps[name]
        for dp in dep_paths:
            visit(by_path.get(dp, module_name(dp)), stack + (name,))
        seen.add(name)
        order.append(path)

    for raw in wanted:
        name = _norm(raw)
        if name in builtin:
            continue
        if name not in deps:
            if name in optional:
                continue
            raise BuildError("resolve-modules", f"kernel module {raw!r} is neither built in nor in modules.dep")
        visit(name, ())
    return order


def resolve_in_tree(moddir: Path, wanted: list[str], optional: frozenset[str] = frozenset()) -> list[str]:
    """Same as resolve() reading modules.dep / modules.builtin from /lib/modules/<version>."""
    dep = moddir / "modules.dep"
    if not dep.exists():
        raise BuildError("resolve-modules", f"{dep} missing (run depmod -b first)")
    builtin_file = moddir / "modules.builtin"
    builtin = parse_builtin(builtin_file.read_text()) if builtin_file.exists() else set()
    return resolve(wanted, parse_modules_dep(dep.read_text()), builtin, optional)
