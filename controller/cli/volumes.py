"""`kumo volumes ...`: EBS-style block volumes (REST /v1/volumes): create, list, show, delete,
attach, detach, modify (grow), set-tags; --wait polls the volume until the storage node and the
host have done their part. Output is the API's objects (`--output json`) or tables."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from .context import IntervalOpt, OutputOpt, TimeoutOpt, id_path, list_params, parse_tags, state
from .output import emit_list, emit_one, emit_record, note
from .wait import Goal, wait_for

app = typer.Typer(help="Block volumes: create, attach to instances, grow, delete.",
                  no_args_is_help=True)


def _attachment(v: dict) -> dict:
    atts = v.get("attachments") or []
    return atts[0] if atts else {}


COLUMNS = [
    ("VOLUME", "volume_id"),
    ("NAME", lambda v: (v.get("tags") or {}).get("Name")),
    ("SIZE GIB", "size_gib"),
    ("STATE", "state"),
    ("AZ", "availability_zone"),
    ("INSTANCE", lambda v: _attachment(v).get("instance_id")),
    ("DEVICE", lambda v: _attachment(v).get("device")),
    ("ATTACHMENT", lambda v: _attachment(v).get("state")),
    ("CREATED", "create_time"),
]
ATTACHMENT_COLUMNS = [("VOLUME", "volume_id"), ("INSTANCE", "instance_id"), ("DEVICE", "device"),
                      ("STATE", "state"), ("DELETE ON TERMINATION", "delete_on_termination"),
                      ("ATTACHED", "attach_time")]

IdArg = Annotated[str, typer.Argument(help="Volume id.")]
WaitOpt = Annotated[bool, typer.Option("--wait", help="Wait for the target state.")]


# -- what --wait waits for ----------------------------------------------------------------------
def _failed(v: dict) -> str | None:
    if v.get("state") in ("error", "deleting", "deleted"):
        return f"volume {v.get('volume_id')} is {v.get('state')}"
    return None


AVAILABLE = Goal("available", lambda v: v.get("state") == "available" and not v.get("attachments"),
                 _failed)
ATTACHED = Goal("attached", lambda v: _attachment(v).get("state") == "attached",
                lambda v: _failed(v) or (f"volume {v.get('volume_id')} is {v.get('state')} and "
                                         "not attached" if not v.get("attachments") else None))
GROWN = Goal("grown", lambda v: v.get("modification_state") in (None, "completed"), _failed)


def _describe(v: dict) -> str:
    att = _attachment(v)
    more = f" / {att.get('state')} to {att.get('instance_id')}" if att else ""
    return f"{v.get('volume_id')}: {v.get('state')}{more}"


def _path(volume_id: str, action: str = "") -> str:
    return id_path("volumes", "volume", volume_id, action)


def _wait(ctx: typer.Context, volume_id: str, goal: Goal, timeout: float,
          interval: float) -> dict:
    st = state(ctx)
    note(f"waiting for {volume_id}: {goal.label}")
    final = wait_for(st.api(), [volume_id], goal, timeout=timeout, interval=interval,
                     clock=st.clock, sleep=st.sleep, path="/v1/volumes/{}", describe=_describe,
                     failed_code="VolumeFailed")
    return final[volume_id]


def _show(st, volume: dict) -> None:
    emit_one(st, volume, COLUMNS)


def _attachment_answer(ctx: typer.Context, st, volume_id: str, result: dict, goal: Goal,
                       wait: bool, timeout: float, interval: float) -> None:
    """What attach and detach print: the attachment, or with --wait the volume once at goal."""
    if wait:
        _show(st, _wait(ctx, volume_id, goal, timeout, interval))
    else:
        emit_record(st, result)


# -- commands -----------------------------------------------------------------------------------
@app.command("create")
def create(ctx: typer.Context,
           size: Annotated[Optional[int], typer.Option(
               "--size", min=1, help="Size in GiB (with --snapshot: at least the snapshot's; "
               "default the snapshot's).")] = None,
           snapshot: Annotated[Optional[str], typer.Option(
               "--snapshot", help="Make the volume from this (completed) snapshot.")] = None,
           tag: Annotated[Optional[list[str]], typer.Option("--tag", help="KEY=VALUE, repeatable.")] = None,
           client_token: Annotated[Optional[str], typer.Option(
               "--client-token", help="Idempotency token.")] = None,
           wait: WaitOpt = False, timeout: TimeoutOpt = 600.0, poll_interval: IntervalOpt = 2.0,
           output: OutputOpt = None) -> None:
    """Create a volume (POST /v1/volumes), empty or from a snapshot; --wait until it is
    available."""
    if size is None and snapshot is None:
        raise typer.BadParameter("give --size, --snapshot or both", param_hint="--size")
    st = state(ctx, output)
    body = {"size_gib": size, "tags": parse_tags(tag), "client_token": client_token}
    if snapshot is not None:
        body["snapshot_id"] = snapshot
    volume = st.api().post("/v1/volumes", json=body)
    if wait:
        volume = _wait(ctx, volume["volume_id"], AVAILABLE, timeout, poll_interval)
    _show(st, volume)


@app.command("list")
def list_(ctx: typer.Context,
          status: Annotated[Optional[str], typer.Option(
              "--status", help="e.g. available or in-use (comma separated).")] = None,
          instance: Annotated[Optional[str], typer.Option(
              "--instance", help="Only volumes attached to this instance.")] = None,
          tag: Annotated[Optional[list[str]], typer.Option("--tag", help="KEY=VALUE filter.")] = None,
          output: OutputOpt = None) -> None:
    """List volumes, following pagination."""
    st = state(ctx, output)
    params = list_params(tag, status=status, attachment_instance_id=instance)
    emit_list(st, st.api().paginate("/v1/volumes", params), COLUMNS)


@app.command("show")
def show(ctx: typer.Context, volume_id: IdArg, output: OutputOpt = None) -> None:
    """Show one volume."""
    st = state(ctx, output)
    emit_record(st, st.api().get(_path(volume_id)))


app.command("describe", hidden=True, help="Show one volume (= show).")(show)


@app.command("delete")
def delete(ctx: typer.Context, volume_id: IdArg, output: OutputOpt = None) -> None:
    """Delete an available (detached) volume."""
    st = state(ctx, output)
    emit_record(st, st.api().delete(_path(volume_id)))


@app.command("attach")
def attach(ctx: typer.Context, volume_id: IdArg,
           instance: Annotated[str, typer.Option("--instance", help="Instance id.")],
           device: Annotated[str, typer.Option(
               "--device", help="/dev/sd[b-z] (or /dev/xvd?, /dev/vd?); the guest sees vd?.")],
           delete_on_termination: Annotated[bool, typer.Option(
               "--delete-on-termination/--keep-on-termination",
               help="Delete the volume when the instance terminates.")] = False,
           wait: WaitOpt = False, timeout: TimeoutOpt = 600.0, poll_interval: IntervalOpt = 2.0,
           output: OutputOpt = None) -> None:
    """Attach a volume to an instance (running or stopped); --wait until attached."""
    st = state(ctx, output)
    result = st.api().post(_path(volume_id, "attach"), json={
        "instance_id": instance, "device": device,
        "delete_on_termination": delete_on_termination})
    _attachment_answer(ctx, st, volume_id, result, ATTACHED, wait, timeout, poll_interval)


@app.command("detach")
def detach(ctx: typer.Context, volume_id: IdArg,
           force: Annotated[bool, typer.Option(
               "--force", help="Detach even if the guest does not let go (it sees I/O "
               "errors).")] = False,
           instance: Annotated[Optional[str], typer.Option(
               "--instance", help="Only if attached to this instance.")] = None,
           wait: WaitOpt = False, timeout: TimeoutOpt = 600.0, poll_interval: IntervalOpt = 2.0,
           output: OutputOpt = None) -> None:
    """Detach a volume from its instance; --wait until it is available again."""
    st = state(ctx, output)
    result = st.api().post(_path(volume_id, "detach"),
                           json={"force": force, "instance_id": instance})
    _attachment_answer(ctx, st, volume_id, result, AVAILABLE, wait, timeout, poll_interval)


@app.command("modify")
def modify(ctx: typer.Context, volume_id: IdArg,
           size: Annotated[int, typer.Option("--size", min=1, help="New size in GiB (only "
                                                                  "grows).")],
           wait: WaitOpt = False, timeout: TimeoutOpt = 600.0, poll_interval: IntervalOpt = 2.0,
           output: OutputOpt = None) -> None:
    """Grow a volume (detached: the storage backend cannot grow an attached one yet)."""
    st = state(ctx, output)
    volume = st.api().patch(_path(volume_id), {"size_gib": size})
    if wait:
        volume = _wait(ctx, volume_id, GROWN, timeout, poll_interval)
    _show(st, volume)


@app.command("set-tags")
def set_tags(ctx: typer.Context, volume_id: IdArg,
             tag: Annotated[Optional[list[str]], typer.Option(
                 "--tag", help="KEY=VALUE, repeatable: the new set (none: remove all).")] = None,
             output: OutputOpt = None) -> None:
    """Replace a volume's tags."""
    st = state(ctx, output)
    emit_record(st, st.api().put(_path(volume_id, "tags"), {"tags": parse_tags(tag)}))
