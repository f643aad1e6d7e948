"""`kumo admin backup FILE` and `kumo admin restore FILE`: run on the controller host with its
settings in the environment (`set -a; . /etc/kumo/controller.env; set +a`), not through the
API: a backup needs the database itself and the state directory's secrets. The work is
controller/backup.py's; this only maps its errors and prints what it did."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from .admin_status import app
from .api import CliError
from .context import OutputOpt, state
from .output import emit_record


@app.command("backup")
def backup(ctx: typer.Context,
           file: Annotated[Path, typer.Argument(help="Where to write the backup (a tar file).")],
           with_images: Annotated[bool, typer.Option(
               "--with-images", help="Also copy the image files (else only their list).")] = False,
           output: OutputOpt = None) -> None:
    """Back up this controller's database and secrets (and the image store's metadata)."""
    from controller import backup as backups
    from controller.settings import Settings
    try:
        manifest = backups.create(Settings(), file, include_images=with_images)
    except backups.BackupError as e:
        raise CliError(e.code, str(e)) from None
    emit_record(state(ctx, output), {
        "file": str(file), "database": manifest["database"], "revision": manifest["revision"],
        "members": len(manifest["members"]), "images": len(manifest["images"]),
        "images_included": manifest["images_included"]})


@app.command("restore")
def restore(ctx: typer.Context,
            file: Annotated[Path, typer.Argument(help="A backup from `kumo admin backup`.")],
            force: Annotated[bool, typer.Option(
                "--force", help="Replace a database that already has Kumo's tables.")] = False,
            output: OutputOpt = None) -> None:
    """Restore a backup onto this (stopped or fresh) controller; then start it."""
    from controller import backup as backups
    from controller.settings import Settings
    try:
        report = backups.restore(Settings(), file, force=force)
    except backups.BackupError as e:
        raise CliError(e.code, str(e)) from None
    emit_record(state(ctx, output), dataclasses.asdict(report))
