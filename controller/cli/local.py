"""`kumo image ...` (the local AMI builder) and `kumo lab ...` (the all-in-one lab).

These run on the machine itself rather than through the API. Both import their backends lazily
(images.builder, lab) so the rest of the CLI works where those are absent, and stay thin so the
backends' signatures can change with one edit here. Backend errors carrying a `code` (LabError,
BuildError) are reported like API errors.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path
from typing import Annotated, Any, Iterator

import typer

from .api import CliError
from .context import Output, OutputOpt, state

image = typer.Typer(help="Build AMIs locally with the image builder.", no_args_is_help=True)
lab = typer.Typer(help="The all-in-one lab: hosts as network namespaces on this machine.",
                  no_args_is_help=True)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return value


def _show(ctx: typer.Context, value: Any, output: Output | None) -> None:
    if value is None:
        return
    if state(ctx, output).output == Output.json:
        typer.echo(json.dumps(_jsonable(value), indent=2, default=str))
    elif hasattr(value, "to_text"):
        typer.echo(value.to_text().rstrip("\n"))
    elif isinstance(value, str):
        typer.echo(value.rstrip("\n"))
    else:
        typer.echo(json.dumps(_jsonable(value), indent=2, default=str))


@contextlib.contextmanager
def _backend_errors() -> Iterator[None]:
    try:
        yield
    except CliError:
        raise
    except Exception as e:  # only errors with a stable code are expected ones; others propagate
        code = getattr(e, "code", None)
        if not isinstance(code, str):
            raise
        raise CliError(code, getattr(e, "message", None) or str(e)) from e


def _builder():
    try:
        from images import builder
    except ImportError as e:
        raise CliError("Unavailable", f"the image builder is not available: {e}") from e
    return builder


def _lab():
    try:
        from lab import Lab
    except ImportError as e:
        raise CliError("Unavailable", f"the lab is not available: {e}") from e
    state_dir = Path(os.environ.get("KUMO_LAB_STATE") or "/var/lib/kumo/lab")
    with _backend_errors():
        return Lab(state_dir=state_dir, prefix=os.environ.get("KUMO_LAB_PREFIX") or "kumo")


@image.command("build")
def image_build(ctx: typer.Context,
                name: Annotated[str, typer.Argument(help="Recipe name, e.g. kumo-tiny.")],
                output: OutputOpt = None) -> None:
    """Build an image from a recipe into the image cache (cached when the recipe is unchanged)."""
    with _backend_errors():
        manifest = _builder().build(name)
    _show(ctx, manifest, output)


@image.command("list")
def image_list(ctx: typer.Context, output: OutputOpt = None) -> None:
    """List the available recipes."""
    with _backend_errors():
        recipes = list(_builder().list_recipes())
    if state(ctx, output).output == Output.json:
        typer.echo(json.dumps({"items": recipes, "next_token": None}, indent=2, default=str))
    else:
        for r in recipes:
            typer.echo(r if isinstance(r, str) else json.dumps(_jsonable(r), default=str))


@lab.command("up")
def lab_up(ctx: typer.Context,
           hosts: Annotated[int, typer.Option("--hosts", min=1, help="Number of hosts.")] = 2,
           output: OutputOpt = None) -> None:
    """Create (or complete) the lab: namespaces, libvirtds, controller and agents."""
    lab_obj = _lab()
    with _backend_errors():
        result = lab_obj.up(hosts)
    _show(ctx, result, output)


@lab.command("status")
def lab_status(ctx: typer.Context, output: OutputOpt = None) -> None:
    """Show what the lab is running."""
    lab_obj = _lab()
    with _backend_errors():
        result = lab_obj.status()
    _show(ctx, result, output)


@lab.command("down")
def lab_down(ctx: typer.Context) -> None:
    """Tear the lab down completely."""
    lab_obj = _lab()
    with _backend_errors():
        result = lab_obj.down()
    _show(ctx, result, Output.table)


@lab.command("env")
def lab_env(admin: Annotated[bool, typer.Option("--admin", help="Use the admin API key.")] = False) -> None:
    """Print `export KUMO_URL=... KUMO_API_KEY=...` lines for `eval "$(kumo lab env)"`."""
    lab_obj = _lab()
    with _backend_errors():
        env = lab_obj.env(admin)
    if isinstance(env, dict):
        import shlex
        for k, v in env.items():
            typer.echo(f"export {k}={shlex.quote(str(v))}")
    else:
        typer.echo(str(env).rstrip("\n"))
