"""`kumo instances ...`: launch, list, inspect and drive the lifecycle of instances."""
from __future__ import annotations

import base64
from pathlib import Path
from typing import Annotated, Optional

import typer

from .api import CliError
from .context import IntervalOpt, Output, OutputOpt, TimeoutOpt, list_params, parse_tags, state
from .output import emit_list, emit_record, note, print_json
from .wait import RUNNING, STOPPED, TERMINATED, Goal, wait_for

app = typer.Typer(help="Launch and manage instances.", no_args_is_help=True)

COLUMNS = [
    ("INSTANCE", "instance_id"),
    ("NAME", lambda i: (i.get("tags") or {}).get("Name")),
    ("STATE", "state"),
    ("STATUS", "instance_status"),
    ("TYPE", "instance_type"),
    ("IMAGE", "image_id"),
    ("HOST", "host_id"),
    ("SUBNET", "subnet_id"),
    ("PRIVATE IP", "private_ip"),
    ("PUBLIC IP", "public_ip"),
    ("LAUNCHED", "launch_time"),
]

WaitOpt = Annotated[bool, typer.Option("--wait", help="Wait for the target state.")]


def _path(instance_id: str, action: str = "") -> str:
    if "/" in instance_id or not instance_id:
        raise typer.BadParameter(f"invalid instance id {instance_id!r}")
    return f"/v1/instances/{instance_id}" + (f"/{action}" if action else "")


def parse_block_device(text: str) -> dict:
    """--block-device DEVICE=SPEC -> one of the launch's block_device_mappings. SPEC is
    ':'-separated parts: a size in GiB, a snapshot id (snap-...), `keep` (do not delete the
    volume when the instance terminates); or `none` (drop the image's mapping of DEVICE).
    /dev/sda1=20 sizes the root disk; /dev/sdf=10, /dev/sdg=snap-0123...:keep add volumes."""
    device, sep, spec = text.partition("=")
    if not sep or not device or not spec:
        raise typer.BadParameter(f"{text!r}: expected DEVICE=SIZE[:SNAPSHOT][:keep] or "
                                 "DEVICE=none")
    if spec == "none":
        return {"device_name": device, "no_device": True}
    ebs: dict = {}
    for part in spec.split(":"):
        if part.isdigit() and "volume_size_gib" not in ebs:
            ebs["volume_size_gib"] = int(part)
        elif part.startswith("snap-") and "snapshot_id" not in ebs:
            ebs["snapshot_id"] = part
        elif part == "keep" and "delete_on_termination" not in ebs:
            ebs["delete_on_termination"] = False
        else:
            raise typer.BadParameter(f"{text!r}: {part!r} is not a size, a snapshot id or "
                                     "`keep` (each at most once)")
    return {"device_name": device, "ebs": ebs}


def _wait(ctx: typer.Context, ids: list[str], goal: Goal, timeout: float,
          interval: float) -> list[dict]:
    st = state(ctx)
    final = wait_for(st.api(), ids, goal, timeout=timeout, interval=interval, clock=st.clock,
                     sleep=st.sleep)
    return [final[i] for i in ids]


@app.command("run")
def run(ctx: typer.Context,
        image: Annotated[str, typer.Option("--image", help="Image name or id.")],
        instance_type: Annotated[str, typer.Option("--type", help="Instance type name.")],
        count: Annotated[int, typer.Option("--count", min=1, help="Instances wanted (max_count).")] = 1,
        min_count: Annotated[Optional[int], typer.Option(
            "--min-count", min=1, help="Fewest acceptable (default: --count).")] = None,
        key: Annotated[Optional[str], typer.Option("--key", help="Key pair name.")] = None,
        user_data_file: Annotated[Optional[Path], typer.Option(
            "--user-data-file", exists=True, dir_okay=False, readable=True)] = None,
        root_disk_gib: Annotated[Optional[int], typer.Option("--root-disk-gib", min=1)] = None,
        tag: Annotated[Optional[list[str]], typer.Option("--tag", help="KEY=VALUE, repeatable.")] = None,
        client_token: Annotated[Optional[str], typer.Option(
            "--client-token", help="Idempotency token.")] = None,
        subnet: Annotated[Optional[str], typer.Option(
            "--subnet", help="Subnet id (default: the account's default subnet).")] = None,
        private_ip: Annotated[Optional[str], typer.Option(
            "--private-ip", help="A specific private address in the subnet.")] = None,
        public_ip: Annotated[Optional[bool], typer.Option(
            "--public-ip/--no-public-ip",
            help="Auto-assign a public IP (default: the subnet's setting).")] = None,
        security_group: Annotated[Optional[list[str]], typer.Option(
            "--security-group", help="Security group id, repeatable (default: the VPC's "
            "default group).")] = None,
        block_device: Annotated[Optional[list[str]], typer.Option(
            "--block-device", help="DEVICE=SIZE[:SNAPSHOT][:keep] or DEVICE=none, repeatable: "
            "a volume per instance (/dev/sdf=10, /dev/sdg=snap-...:keep), the root size "
            "(/dev/sda1=20), or drop the image's volume.")] = None,
        http_tokens: Annotated[Optional[str], typer.Option(
            "--http-tokens", help="Metadata service: optional|required (default required).")] = None,
        http_endpoint: Annotated[Optional[str], typer.Option(
            "--http-endpoint", help="Metadata service: enabled|disabled.")] = None,
        hop_limit: Annotated[Optional[int], typer.Option(
            "--http-put-response-hop-limit", help="Metadata token replies' IP TTL (1..64).")] = None,
        metadata_tags: Annotated[Optional[str], typer.Option(
            "--instance-metadata-tags", help="Tags in instance metadata: enabled|disabled.")] = None,
        nocloud_seed: Annotated[Optional[bool], typer.Option(
            "--nocloud-seed/--no-nocloud-seed", help="A NoCloud seed ISO, or none: the guest "
            "reads 169.254.169.254 only (default: the image's choice).")] = None,
        dry_run: Annotated[bool, typer.Option(
            "--dry-run", help="Create nothing: show the hourly and monthly price of what would "
            "be created (POST /v1/instances/estimate).")] = False,
        wait: WaitOpt = False,
        timeout: TimeoutOpt = 600.0,
        poll_interval: IntervalOpt = 2.0,
        output: OutputOpt = None) -> None:
    """Launch instances (POST /v1/instances)."""
    st = state(ctx, output)
    body = {
        "image": image, "instance_type": instance_type,
        "min_count": min_count if min_count is not None else count, "max_count": count,
        "key_name": key, "root_disk_gib": root_disk_gib, "tags": parse_tags(tag),
        "client_token": client_token, "subnet_id": subnet, "private_ip": private_ip,
        "associate_public_ip": public_ip, "security_group_ids": list(security_group or []),
    }
    if block_device:
        body["block_device_mappings"] = [parse_block_device(b) for b in block_device]
    options = _metadata_options(http_tokens, http_endpoint, hop_limit, metadata_tags)
    if options:
        body["metadata_options"] = options
    if nocloud_seed is not None:
        body["nocloud_seed"] = nocloud_seed
    if user_data_file is not None:
        body["user_data"] = base64.b64encode(user_data_file.read_bytes()).decode("ascii")
    if dry_run:
        _show_estimate(st, st.api().post("/v1/instances/estimate", json=body))
        return
    reservation = st.api().post("/v1/instances", json=body)
    instances = reservation.get("instances", [])
    if wait and instances:
        note(f"waiting for {len(instances)} instance(s) in {reservation.get('reservation_id')}")
        try:
            reservation["instances"] = _wait(ctx, [i["instance_id"] for i in instances], RUNNING,
                                             timeout, poll_interval)
        except CliError:
            _show_reservation(st, reservation)  # the ids must not be lost when the wait fails
            raise
    _show_reservation(st, reservation)


def _show_estimate(st, est: dict) -> None:
    if st.output == Output.json:
        print_json(est)
        return
    emit_list(st, est["lines"], [("WHAT", "what"), ("USAGE TYPE", "usage_type"),
                                 ("RATE", "rate"), ("UNIT", "unit"), ("HOURLY", "hourly"),
                                 ("MONTHLY", "monthly")],
              title=f"dry run: {est['hourly']} {est['currency']}/hour, {est['monthly']} "
                    f"{est['currency']}/month ({est['month_hours']} h)")


def _show_reservation(st, reservation: dict) -> None:
    if st.output == Output.json:
        print_json(reservation)
    else:
        emit_list(st, reservation.get("instances", []), COLUMNS,
                  title=f"reservation {reservation.get('reservation_id')}")


@app.command("list")
def list_(ctx: typer.Context,
          state_filter: Annotated[Optional[str], typer.Option("--state", help="e.g. running")] = None,
          tag: Annotated[Optional[list[str]], typer.Option("--tag", help="KEY=VALUE filter.")] = None,
          output: OutputOpt = None) -> None:
    """List instances, following pagination."""
    st = state(ctx, output)
    params = list_params(tag, state=state_filter)
    emit_list(st, st.api().paginate("/v1/instances", params), COLUMNS)


@app.command("describe")
def describe(ctx: typer.Context, instance_id: str, output: OutputOpt = None) -> None:
    """Show one instance."""
    st = state(ctx, output)
    emit_record(st, st.api().get(_path(instance_id)))


def _action(ctx: typer.Context, instance_id: str, action: str, output, goal: Goal | None,
            timeout: float, interval: float, **params) -> None:
    st = state(ctx, output)
    result = st.api().post(_path(instance_id, action), **params)
    if goal is not None:
        result = _wait(ctx, [instance_id], goal, timeout, interval)[0]
    if result is None:
        result = {"instance_id": instance_id}
    if st.output == Output.json:
        print_json(result)
    else:
        emit_list(st, [result], COLUMNS)


@app.command("stop")
def stop(ctx: typer.Context, instance_id: str,
         force: Annotated[bool, typer.Option("--force", help="Power off without a clean shutdown.")] = False,
         wait: WaitOpt = False, timeout: TimeoutOpt = 600.0, poll_interval: IntervalOpt = 2.0,
         output: OutputOpt = None) -> None:
    """Stop an instance."""
    _action(ctx, instance_id, "stop", output, STOPPED if wait else None, timeout, poll_interval,
            force="true" if force else None)


@app.command("start")
def start(ctx: typer.Context, instance_id: str, wait: WaitOpt = False,
          timeout: TimeoutOpt = 600.0, poll_interval: IntervalOpt = 2.0,
          output: OutputOpt = None) -> None:
    """Start a stopped instance."""
    _action(ctx, instance_id, "start", output, RUNNING if wait else None, timeout, poll_interval)


@app.command("reboot")
def reboot(ctx: typer.Context, instance_id: str, output: OutputOpt = None) -> None:
    """Reboot an instance."""
    _action(ctx, instance_id, "reboot", output, None, 0, 0)


@app.command("terminate")
def terminate(ctx: typer.Context, instance_ids: Annotated[list[str], typer.Argument()],
              wait: WaitOpt = False, timeout: TimeoutOpt = 600.0,
              poll_interval: IntervalOpt = 2.0, output: OutputOpt = None) -> None:
    """Terminate one or more instances (all are attempted; exit 1 if any failed)."""
    st = state(ctx, output)
    results, errors = [], []
    for iid in instance_ids:
        try:
            results.append(st.api().post(_path(iid, "terminate")) or {"instance_id": iid})
        except CliError as e:
            errors.append(e)
            typer.echo(f"error: {e.code}: {iid}: {e.message}", err=True)
    if wait and results:
        results = _wait(ctx, [r["instance_id"] for r in results], TERMINATED, timeout,
                        poll_interval)
    if st.output == Output.json:
        print_json({"items": results, "next_token": None})
    elif results:
        emit_list(st, results, COLUMNS)
    if errors:
        raise typer.Exit(1)


@app.command("modify")
def modify(ctx: typer.Context, instance_id: str,
           instance_type: Annotated[Optional[str], typer.Option(
               "--type", help="New instance type (the instance must be stopped).")] = None,
           root_size: Annotated[Optional[int], typer.Option(
               "--root-size", min=1, max=16384,
               help="New root disk size in GiB: only grows; running or stopped.")] = None,
           output: OutputOpt = None) -> None:
    """Change a stopped instance's type (applies on next start) and/or grow its root disk (the
    guest sees the larger disk at once; its root filesystem grows at the next boot)."""
    if instance_type is None and root_size is None:
        raise typer.BadParameter("give --type and/or --root-size")
    body: dict = {}
    if instance_type is not None:
        body["instance_type"] = instance_type
    if root_size is not None:
        body["root_disk_gib"] = root_size
    st = state(ctx, output)
    emit_record(st, st.api().patch(_path(instance_id), body))


def _metadata_options(tokens, endpoint, hop_limit, tags) -> dict:
    given = {"http_tokens": tokens, "http_endpoint": endpoint,
             "http_put_response_hop_limit": hop_limit, "instance_metadata_tags": tags}
    return {k: v for k, v in given.items() if v is not None}


@app.command("metadata-options")
def metadata_options(ctx: typer.Context, instance_id: str,
                     http_tokens: Annotated[Optional[str], typer.Option(
                         "--http-tokens", help="optional|required")] = None,
                     http_endpoint: Annotated[Optional[str], typer.Option(
                         "--http-endpoint", help="enabled|disabled")] = None,
                     hop_limit: Annotated[Optional[int], typer.Option(
                         "--http-put-response-hop-limit", help="1..64")] = None,
                     metadata_tags: Annotated[Optional[str], typer.Option(
                         "--instance-metadata-tags", help="enabled|disabled")] = None,
                     output: OutputOpt = None) -> None:
    """Change a live instance's metadata service options (ModifyInstanceMetadataOptions)."""
    body = _metadata_options(http_tokens, http_endpoint, hop_limit, metadata_tags)
    if not body:
        raise typer.BadParameter("give at least one option")
    st = state(ctx, output)
    emit_record(st, st.api().post(_path(instance_id, "metadata-options"), body))


@app.command("set-groups")
def set_groups(ctx: typer.Context, instance_id: str,
               security_group: Annotated[list[str], typer.Option(
                   "--security-group", help="Security group id, repeatable: the new set.")],
               output: OutputOpt = None) -> None:
    """Replace a live instance's security groups (in force within a second)."""
    st = state(ctx, output)
    emit_record(st, st.api().put(_path(instance_id, "security-groups"),
                                 {"security_group_ids": list(security_group)}))


@app.command("console")
def console(ctx: typer.Context, instance_id: str, output: OutputOpt = None) -> None:
    """Print an instance's serial console output."""
    st = state(ctx, output)
    result = st.api().get(_path(instance_id, "console"))
    if st.output == Output.json:
        print_json(result)
    else:
        typer.echo(result.get("output") or "", nl=False)


@app.command("status")
def status(ctx: typer.Context, instance_id: str, output: OutputOpt = None) -> None:
    """Show an instance's state and status checks."""
    st = state(ctx, output)
    emit_record(st, st.api().get(_path(instance_id, "status")))
