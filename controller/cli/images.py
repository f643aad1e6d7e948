"""`kumo images create-from | share | unshare | make-public | make-private | permissions`: images
made from instances and their launch permissions. The commands join the `kumo images` group of
resources.py when this module is imported (controller/cli/main.py imports it)."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from .context import OutputOpt, state
from .output import emit_record
from .resources import _segment, images

ImageArg = Annotated[str, typer.Argument(help="Image id.")]
AccountOpt = Annotated[list[str], typer.Option("--account", help="Account id (repeatable).")]


@images.command("create-from")
def images_create_from(
        ctx: typer.Context,
        instance: Annotated[str, typer.Argument(help="Instance id.")],
        name: Annotated[str, typer.Option("--name")],
        description: Annotated[Optional[str], typer.Option("--description")] = None,
        no_reboot: Annotated[bool, typer.Option(
            "--no-reboot", help="Copy while it runs (crash-consistent at best).")] = False,
        output: OutputOpt = None) -> None:
    """Make a private image from an instance (stopped for the copy and started again, unless
    --no-reboot). The image is pending until the copy is done."""
    st = state(ctx, output)
    body = {"name": name, "no_reboot": no_reboot}
    if description is not None:
        body["description"] = description
    emit_record(st, st.api().post(f"/v1/instances/{_segment(instance, 'instance')}/image",
                                  json=body))


def _modify(ctx: typer.Context, image: str, output, **body) -> None:
    st = state(ctx, output)
    emit_record(st, st.api().request(
        "PUT", f"/v1/images/{_segment(image, 'image')}/launch-permission", json=body))


@images.command("permissions")
def images_permissions(ctx: typer.Context, image: ImageArg, output: OutputOpt = None) -> None:
    """Show who may launch an image you own."""
    st = state(ctx, output)
    emit_record(st, st.api().get(f"/v1/images/{_segment(image, 'image')}/launch-permission"))


@images.command("share")
def images_share(ctx: typer.Context, image: ImageArg, account: AccountOpt,
                 output: OutputOpt = None) -> None:
    """Let other accounts see and launch an image you own."""
    _modify(ctx, image, output, add=account)


@images.command("unshare")
def images_unshare(ctx: typer.Context, image: ImageArg, account: AccountOpt,
                   output: OutputOpt = None) -> None:
    """Take accounts off an image's launch permissions."""
    _modify(ctx, image, output, remove=account)


@images.command("make-public")
def images_make_public(ctx: typer.Context, image: ImageArg, output: OutputOpt = None) -> None:
    """Let every account launch the image (admin)."""
    _modify(ctx, image, output, public=True)


@images.command("make-private")
def images_make_private(ctx: typer.Context, image: ImageArg, output: OutputOpt = None) -> None:
    """Only the owner and the accounts it is shared with may launch the image."""
    _modify(ctx, image, output, public=False)
