"""`kumo images ...` and `kumo keys ...`: machine images and SSH key pairs (REST resources)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from .api import CliError
from .context import OutputOpt, state
from .output import emit_list, emit_record, note

images = typer.Typer(help="Register, import and list machine images.", no_args_is_help=True)
keys = typer.Typer(help="Create, import and delete SSH key pairs.", no_args_is_help=True)

IMAGE_COLUMNS = [("IMAGE", "image_id"), ("NAME", "name"), ("STATE", "state"),
                 ("PUBLIC", "public"), ("ARCH", "architecture"), ("FORMAT", "format"),
                 ("VIRTUAL SIZE", "virtual_size"), ("OWNER", "owner_account_id")]
KEY_COLUMNS = [("NAME", "name"), ("KEY PAIR", "key_pair_id"), ("TYPE", "key_type"),
               ("FINGERPRINT", "fingerprint"), ("CREATED", "created_at")]


def default_key_dir() -> Path:
    """Where `keys create` saves private keys and `kumo ssh` looks for them."""
    return Path.home() / ".kumo" / "keys"


def _segment(value: str, what: str) -> str:
    # Names go into URL paths: refuse anything that would change the path.
    if not value or "/" in value or value in (".", ".."):
        raise typer.BadParameter(f"invalid {what} {value!r}")
    return value


@images.command("list")
def images_list(ctx: typer.Context, output: OutputOpt = None) -> None:
    """List images you own and public images."""
    st = state(ctx, output)
    emit_list(st, st.api().paginate("/v1/images"), IMAGE_COLUMNS)


@images.command("describe")
def images_describe(ctx: typer.Context, image: Annotated[str, typer.Argument(help="Name or id.")],
                    output: OutputOpt = None) -> None:
    """Show one image."""
    st = state(ctx, output)
    emit_record(st, st.api().get(f"/v1/images/{_segment(image, 'image')}"))


@images.command("register")
def images_register(
        ctx: typer.Context,
        name: Annotated[str, typer.Option("--name")],
        path: Annotated[str, typer.Option("--path", help="Image file on the controller host.")],
        public: Annotated[bool, typer.Option("--public/--private")] = False,
        ready_marker: Annotated[Optional[str], typer.Option("--ready-marker")] = None,
        image_format: Annotated[str, typer.Option("--format")] = "qcow2",
        architecture: Annotated[str, typer.Option("--architecture")] = "x86_64",
        min_ram_mib: Annotated[Optional[int], typer.Option("--min-ram-mib", min=1)] = None,
        description: Annotated[Optional[str], typer.Option("--description")] = None,
        output: OutputOpt = None) -> None:
    """Register an image file already on the controller host (admin)."""
    st = state(ctx, output)
    body = {"name": name, "path": path, "format": image_format, "public": public,
            "architecture": architecture, "ready_marker": ready_marker}
    if min_ram_mib is not None:
        body["min_ram_mib"] = min_ram_mib
    if description is not None:
        body["description"] = description
    emit_record(st, st.api().post("/v1/images", json=body))


@images.command("import")
def images_import(
        ctx: typer.Context,
        file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
        name: Annotated[str, typer.Option("--name")],
        image_format: Annotated[str, typer.Option("--format")] = "qcow2",
        public: Annotated[bool, typer.Option("--public/--private")] = False,
        output: OutputOpt = None) -> None:
    """Upload a local image file (POST /v1/images/import)."""
    st = state(ctx, output)
    with file.open("rb") as f:
        result = st.api().request(
            "POST", "/v1/images/import",
            params={"name": name, "format": image_format, "public": str(public).lower()},
            content=f, headers={"Content-Type": "application/octet-stream"})
    emit_record(st, result)


@images.command("deregister")
def images_deregister(ctx: typer.Context, image: Annotated[str, typer.Argument(help="Name or id.")],
                      output: OutputOpt = None) -> None:
    """Deregister an image."""
    st = state(ctx, output)
    result = st.api().delete(f"/v1/images/{_segment(image, 'image')}")
    emit_record(st, result if result is not None else {"image_id": image, "deregistered": True})


def write_private_key(path: Path, key: str) -> None:
    """Write `key` to `path` readable by the owner only, never briefly world-readable."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)  # the umask may have narrowed it; make it exact
        f.write(key if key.endswith("\n") else key + "\n")


@keys.command("create")
def keys_create(ctx: typer.Context, name: str,
                out: Annotated[Optional[Path], typer.Option(
                    "--out", help="Private key file (default ~/.kumo/keys/NAME).")] = None,
                output: OutputOpt = None) -> None:
    """Generate a key pair; the private key is saved to a 0600 file, never printed."""
    st = state(ctx, output)
    dest = out or default_key_dir() / _segment(name, "key name")
    if dest.exists():
        raise CliError("FileExists", f"{dest} already exists; choose another --out")
    result = st.api().post("/v1/key-pairs", json={"name": name})
    private = result.pop("private_key", None)
    if not private:
        raise CliError("InvalidResponse", "the API returned no private_key")
    write_private_key(dest, private)
    note(f"private key written to {dest}")
    emit_record(st, result)


@keys.command("import")
def keys_import(ctx: typer.Context, name: str,
                public_key_file: Annotated[Path, typer.Option(
                    "--public-key-file", exists=True, dir_okay=False, readable=True)],
                output: OutputOpt = None) -> None:
    """Import an existing public key."""
    st = state(ctx, output)
    public_key = public_key_file.read_text().strip()
    emit_record(st, st.api().post("/v1/key-pairs", json={"name": name, "public_key": public_key}))


@keys.command("list")
def keys_list(ctx: typer.Context, output: OutputOpt = None) -> None:
    """List key pairs."""
    st = state(ctx, output)
    emit_list(st, st.api().paginate("/v1/key-pairs"), KEY_COLUMNS)


@keys.command("delete")
def keys_delete(ctx: typer.Context, name: str, output: OutputOpt = None) -> None:
    """Delete a key pair (the local private key file is left alone)."""
    st = state(ctx, output)
    result = st.api().delete(f"/v1/key-pairs/{_segment(name, 'key name')}")
    emit_record(st, result if result is not None else {"name": name, "deleted": True})
