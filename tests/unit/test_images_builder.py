"""Image builder: manifest round trip, cache hit/miss on the recipe hash, atomic failure behaviour."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from images import builder
from images.errors import BuildError, UnknownRecipe
from images.manifest import Manifest
from images.recipes import BuildContext, RecipeOutput, recipe_hash


class FakeRecipe:
    """Writes a fake 'qcow2'; can fail at a chosen point to check that nothing half-built remains."""

    ready_marker = "KUMO-READY"
    min_ram_mib = 64
    sources: tuple[str, ...] = ()

    def __init__(self, name="fake", version="1", fail_step: str | None = None, content=b"image-bytes"):
        self.name, self.version, self.fail_step, self.content = name, version, fail_step, content
        self.builds = 0

    def build(self, ctx: BuildContext) -> RecipeOutput:
        self.builds += 1
        out = ctx.work / "image.qcow2"
        out.write_bytes(self.content)
        if self.fail_step:
            raise BuildError(self.fail_step, "boom")
        return RecipeOutput(qcow2=out, virtual_size=1 << 20, kernel_version="k1")


@pytest.fixture
def fake(monkeypatch):
    recipe = FakeRecipe()
    monkeypatch.setattr(builder, "registry", lambda: {recipe.name: recipe})
    return recipe


def quiet(_msg: str) -> None:
    pass


def test_build_writes_image_and_manifest(tmp_path, fake):
    m = builder.build("fake", cache_dir=tmp_path, log=quiet)
    assert m.path == tmp_path / "fake.qcow2" and m.path.read_bytes() == b"image-bytes"
    data = json.loads((tmp_path / "fake.json").read_text())
    for key in ("name", "architecture", "format", "virtual_size", "sha256", "boot_mode", "min_ram_mib",
                "ready_marker", "recipe_hash", "recipe_version", "build_time"):
        assert key in data, key
    assert data["format"] == "qcow2" and data["boot_mode"] == "bios" and data["ready_marker"] == "KUMO-READY"
    assert data["sha256"] == \
        __import__("hashlib").sha256(b"image-bytes").hexdigest()
    assert data["recipe_hash"] == recipe_hash(fake)
    assert "path" not in data
    assert builder.cached_manifest("fake", tmp_path) == m
    assert not list(tmp_path.glob(".build-*"))


def test_cache_hit_skips_build_and_miss_on_recipe_change(tmp_path, fake):
    first = builder.build("fake", cache_dir=tmp_path, log=quiet)
    again = builder.build("fake", cache_dir=tmp_path, log=quiet)
    assert fake.builds == 1 and again.sha256 == first.sha256
    fake.version = "2"  # the recipe hash covers the version
    fake.content = b"new-image"
    rebuilt = builder.build("fake", cache_dir=tmp_path, log=quiet)
    assert fake.builds == 2 and rebuilt.recipe_hash != first.recipe_hash
    assert rebuilt.path.read_bytes() == b"new-image"
    builder.build("fake", cache_dir=tmp_path, force=True, log=quiet)
    assert fake.builds == 3


def test_failed_build_leaves_nothing_that_looks_good(tmp_path, fake):
    fake.fail_step = "mkfs-root"
    with pytest.raises(BuildError) as exc:
        builder.build("fake", cache_dir=tmp_path, log=quiet)
    assert exc.value.step == "mkfs-root" and "mkfs-root" in str(exc.value)
    assert not (tmp_path / "fake.json").exists() and not (tmp_path / "fake.qcow2").exists()
    assert not list(tmp_path.glob(".build-*"))
    assert builder.cached_manifest("fake", tmp_path) is None


def test_failed_rebuild_keeps_previous_good_image(tmp_path, fake):
    good = builder.build("fake", cache_dir=tmp_path, log=quiet)
    fake.version, fake.fail_step = "2", "fetch-kernel"
    with pytest.raises(BuildError):
        builder.build("fake", cache_dir=tmp_path, log=quiet)
    assert builder.cached_manifest("fake", tmp_path) == good
    assert good.path.read_bytes() == b"image-bytes"


def test_cached_manifest_rejects_mismatched_image(tmp_path, fake):
    m = builder.build("fake", cache_dir=tmp_path, log=quiet)
    m.path.chmod(0o644)
    m.path.write_bytes(b"truncated")
    assert builder.cached_manifest("fake", tmp_path) is None
    m.path.unlink()
    assert builder.cached_manifest("fake", tmp_path) is None
    (tmp_path / "fake.json").write_text("{not json")
    assert builder.cached_manifest("fake", tmp_path) is None


def test_stale_build_dirs_are_removed(tmp_path, fake):
    stale = tmp_path / ".build-fake-dead"
    stale.mkdir()
    (stale / "disk.raw").write_bytes(b"x")
    builder.build("fake", cache_dir=tmp_path, log=quiet)
    assert not stale.exists()


def test_unknown_recipe_is_a_named_error(tmp_path, fake):
    with pytest.raises(UnknownRecipe) as exc:
        builder.build("nope", cache_dir=tmp_path, log=quiet)
    assert exc.value.step == "select-recipe" and "fake" in str(exc.value)


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("KUMO_IMAGE_CACHE", str(tmp_path))
    assert builder.cache_dir_default() == tmp_path
    monkeypatch.delenv("KUMO_IMAGE_CACHE")
    assert builder.cache_dir_default() == Path("/var/cache/kumo/images")


def test_real_recipes_are_listed_and_hashes_are_stable():
    assert builder.list_recipes() == ["debian-12", "kumo-tiny"]
    from images.recipes.registry import registry
    for r in registry().values():
        assert recipe_hash(r) == recipe_hash(r) and len(recipe_hash(r)) == 64
        assert r.ready_marker == "KUMO-READY"


def test_manifest_round_trip(tmp_path):
    m = Manifest(name="x", file="x.qcow2", architecture="x86_64", format="qcow2", virtual_size=1, size=2,
                 sha256="ab", boot_mode="bios", min_ram_mib=64, ready_marker="KUMO-READY",
                 recipe_version="1", recipe_hash="cd", build_time="2026-01-01T00:00:00Z", build_seconds=1.0,
                 packages={"p": "1"})
    m.write(tmp_path / "x.json")
    back = Manifest.from_file(tmp_path / "x.json")
    assert back == m and back.path == tmp_path / "x.qcow2"
    assert not list(tmp_path.glob(".*.tmp"))


def test_recipe_hash_covers_recipe_files(tmp_path, monkeypatch):
    import images.recipes as recipes

    for rel in recipes.COMMON_SOURCES:
        (tmp_path / rel).write_text("common")
    (tmp_path / "files/r").mkdir(parents=True)
    (tmp_path / "files/r/init").write_text("v1")
    monkeypatch.setattr(recipes, "PKG_DIR", tmp_path)
    r = FakeRecipe()
    r.sources = ("files/r",)
    h1 = recipe_hash(r)
    (tmp_path / "files/r/init").write_text("v2")
    h2 = recipe_hash(r)
    (tmp_path / "disk.py").write_text("changed")
    assert len({h1, h2, recipe_hash(r)}) == 3
