"""`kumo snapshots ...`: EBS-style snapshots of volumes (REST /v1/snapshots): create, list, show,
delete, set-tags; --wait polls the snapshot until the storage node took it (completed). A volume
is made from one with `kumo volumes create --snapshot SNAP`."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from .context import IntervalOpt, OutputOpt, TimeoutOpt, id_path, list_params, parse_tags, state
from .output import emit_list, emit_one, emit_record, note
from .wait import Goal, wait_for

app = typer.Typer(help="Volume snapshots: create, list, delete; make volumes from them.",
                  no_args_is_help=True)

COLUMNS = [
    ("SNAPSHOT", "snapshot_id"),
    ("NAME", lambda s: (s.get("tags") or {}).get("Name")),
    ("VOLUME", "volume_id"),
    ("SIZE GIB", "volume_size_gib"),
    ("STATE", "state"),
    ("PROGRESS", "progress"),
    ("DESCRIPTION", "description"),
    ("STARTED", "start_time"),
]

IdArg = Annotated[str, typer.Argument(help="Snapshot id.")]
WaitOpt = Annotated[bool, typer.Option("--wait", help="Wait until the snapshot is completed.")]


def _failed(s: dict) -> str | None:
    if s.get("state") in ("error", "deleting", "deleted"):
        more = f": {s['state_message']}" if s.get("state_message") else ""
        return f"snapshot {s.get('snapshot_id')} is {s.get('state')}{more}"
    return None


COMPLETED = Goal("completed", lambda s: s.get("state") == "completed", _failed)


def _describe(s: dict) -> str:
    return f"{s.get('snapshot_id')}: {s.get('state')} {s.get('progress') or ''}".rstrip()


def _path(snapshot_id: str, action: str = "") -> str:
    return id_path("snapshots", "snapshot", snapshot_id, action)


@app.command("create")
def create(ctx: typer.Context,
           volume: Annotated[str, typer.Option("--volume", help="Volume id (attached or not).")],
           description: Annotated[str, typer.Option("--description", help="Up to 255 "
                                                    "characters.")] = "",
           tag: Annotated[Optional[list[str]], typer.Option("--tag", help="KEY=VALUE, repeatable.")] = None,
           wait: WaitOpt = False, timeout: TimeoutOpt = 600.0, poll_interval: IntervalOpt = 2.0,
           output: OutputOpt = None) -> None:
    """Snapshot a volume (POST /v1/snapshots); --wait until it is completed."""
    st = state(ctx, output)
    snap = st.api().post("/v1/snapshots", json={"volume_id": volume, "description": description,
                                                "tags": parse_tags(tag)})
    if wait:
        note(f"waiting for {snap['snapshot_id']}: completed")
        snap = wait_for(st.api(), [snap["snapshot_id"]], COMPLETED, timeout=timeout,
                        interval=poll_interval, clock=st.clock, sleep=st.sleep,
                        path="/v1/snapshots/{}", describe=_describe,
                        failed_code="SnapshotFailed")[snap["snapshot_id"]]
    emit_one(st, snap, COLUMNS)


@app.command("list")
def list_(ctx: typer.Context,
          volume: Annotated[Optional[str], typer.Option(
              "--volume", help="Only snapshots of this volume.")] = None,
          status: Annotated[Optional[str], typer.Option(
              "--status", help="e.g. pending or completed (comma separated).")] = None,
          tag: Annotated[Optional[list[str]], typer.Option("--tag", help="KEY=VALUE filter.")] = None,
          output: OutputOpt = None) -> None:
    """List snapshots, following pagination."""
    st = state(ctx, output)
    params = list_params(tag, volume_id=volume, status=status)
    emit_list(st, st.api().paginate("/v1/snapshots", params), COLUMNS)


@app.command("show")
def show(ctx: typer.Context, snapshot_id: IdArg, output: OutputOpt = None) -> None:
    """Show one snapshot."""
    st = state(ctx, output)
    emit_record(st, st.api().get(_path(snapshot_id)))


@app.command("delete")
def delete(ctx: typer.Context, snapshot_id: IdArg, output: OutputOpt = None) -> None:
    """Delete a snapshot (not while a volume is being created from it)."""
    st = state(ctx, output)
    emit_record(st, st.api().delete(_path(snapshot_id)))


@app.command("set-tags")
def set_tags(ctx: typer.Context, snapshot_id: IdArg,
             tag: Annotated[Optional[list[str]], typer.Option(
                 "--tag", help="KEY=VALUE, repeatable: the new set (none: remove all).")] = None,
             output: OutputOpt = None) -> None:
    """Replace a snapshot's tags."""
    st = state(ctx, output)
    emit_record(st, st.api().put(_path(snapshot_id, "tags"), {"tags": parse_tags(tag)}))
