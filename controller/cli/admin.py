"""`kumo types|hosts|events|accounts ...`: instance types, hosts, the event log and accounts."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from .context import OutputOpt, state
from .output import emit_list, emit_record

types = typer.Typer(help="Instance types.", no_args_is_help=True)
hosts = typer.Typer(help="Hypervisor hosts (admin).", no_args_is_help=True)
events = typer.Typer(help="The event log.", no_args_is_help=True)
accounts = typer.Typer(help="Accounts (admin).", no_args_is_help=True)

TYPE_COLUMNS = [("NAME", "name"), ("VCPUS", "vcpus"), ("MEMORY MIB", "memory_mib"),
                ("HOURLY PRICE", "hourly_price"), ("RETIRED", "retired")]
HOST_COLUMNS = [("HOST", "host_id"), ("STATE", "state"), ("ENABLED", "enabled"),
                ("HYPERVISOR", "hypervisor"), ("ARCH", "architecture"),
                ("VCPUS", lambda h: f"{h.get('vcpus_used')}/{h.get('vcpus')}"),
                ("MEMORY MIB", lambda h: f"{h.get('memory_mib_used')}/{h.get('memory_mib')}"),
                ("DISK GIB", lambda h: _gib(h.get("disk_bytes_used"), h.get("disk_bytes"))),
                ("AGENT", lambda h: (h.get("versions") or {}).get("agent", "-")),
                ("HEALTH", lambda h: "; ".join([h.get("health", "-")] +
                                                list(h.get("health_reasons") or []))),
                ("HEARTBEAT", "last_heartbeat")]
EVENT_COLUMNS = [("TIME", "time"), ("RESOURCE", "resource_id"), ("TYPE", "resource_type"),
                 ("FROM", "from_state"), ("TO", "to_state"), ("REASON", "reason"),
                 ("ACCOUNT", "account_id")]
ACCOUNT_COLUMNS = [("ACCOUNT", "account_id"), ("NAME", "name"), ("ADMIN", "is_admin")]


def _gib(used, total) -> str:
    if used is None or total is None:
        return "-"
    return f"{used / 2**30:.1f}/{total / 2**30:.1f}"


def _segment(value: str) -> str:
    if not value or "/" in value or value in (".", ".."):
        raise typer.BadParameter(f"invalid name {value!r}")
    return value


@types.command("list")
def types_list(ctx: typer.Context,
               include_retired: Annotated[bool, typer.Option("--include-retired")] = False,
               output: OutputOpt = None) -> None:
    """List instance types."""
    st = state(ctx, output)
    params = {"include_retired": "true"} if include_retired else {}
    emit_list(st, st.api().paginate("/v1/instance-types", params), TYPE_COLUMNS)


@types.command("create")
def types_create(ctx: typer.Context, name: str,
                 vcpus: Annotated[int, typer.Option("--vcpus", min=1)],
                 memory_mib: Annotated[int, typer.Option("--memory-mib", min=1)],
                 hourly_price: Annotated[float, typer.Option("--hourly-price", min=0)] = 0.0,
                 output: OutputOpt = None) -> None:
    """Create an instance type (admin)."""
    st = state(ctx, output)
    emit_record(st, st.api().post("/v1/instance-types", json={
        "name": name, "vcpus": vcpus, "memory_mib": memory_mib, "hourly_price": hourly_price}))


@types.command("retire")
def types_retire(ctx: typer.Context, name: str, output: OutputOpt = None) -> None:
    """Retire an instance type: existing instances keep it, new launches are refused (admin)."""
    st = state(ctx, output)
    result = st.api().delete(f"/v1/instance-types/{_segment(name)}")
    emit_record(st, result if result is not None else {"name": name, "retired": True})


@hosts.command("list")
def hosts_list(ctx: typer.Context, output: OutputOpt = None) -> None:
    """List hosts with capacity and usage."""
    st = state(ctx, output)
    emit_list(st, st.api().paginate("/v1/hosts"), HOST_COLUMNS)


@hosts.command("describe")
def hosts_describe(ctx: typer.Context, host_id: str, output: OutputOpt = None) -> None:
    """Show one host."""
    st = state(ctx, output)
    emit_record(st, st.api().get(f"/v1/hosts/{_segment(host_id)}"))


@hosts.command("disable")
def hosts_disable(ctx: typer.Context, host_id: str, output: OutputOpt = None) -> None:
    """Stop scheduling new instances onto a host."""
    st = state(ctx, output)
    emit_record(st, st.api().post(f"/v1/hosts/{_segment(host_id)}/disable"))


@hosts.command("enable")
def hosts_enable(ctx: typer.Context, host_id: str, output: OutputOpt = None) -> None:
    """Allow scheduling onto a host again."""
    st = state(ctx, output)
    emit_record(st, st.api().post(f"/v1/hosts/{_segment(host_id)}/enable"))


@hosts.command("join-token")
def hosts_join_token(ctx: typer.Context, host_id: str,
                     ttl: Annotated[int, typer.Option("--ttl", min=60, max=7 * 86400,
                                                      help="Seconds it stays usable.")] = 3600,
                     output: OutputOpt = None) -> None:
    """A one-time join token for a new host (docs/security.md): give it to the host's agent
    as KUMO_AGENT_JOIN_TOKEN. Shown once."""
    st = state(ctx, output)
    emit_record(st, st.api().post("/v1/hosts/join-tokens",
                                  json={"host_id": host_id, "ttl_s": ttl}))


@hosts.command("remove")
def hosts_remove(ctx: typer.Context, host_id: str, output: OutputOpt = None) -> None:
    """Remove a host: revoke its certificates; it is no longer scheduled, sent work or heard."""
    st = state(ctx, output)
    emit_record(st, st.api().delete(f"/v1/hosts/{_segment(host_id)}"))


@events.command("list")
def events_list(ctx: typer.Context,
                resource_id: Annotated[Optional[str], typer.Option("--resource-id")] = None,
                resource_type: Annotated[Optional[str], typer.Option("--resource-type")] = None,
                since: Annotated[Optional[str], typer.Option("--since", help="ISO 8601 time.")] = None,
                limit: Annotated[Optional[int], typer.Option("--limit", min=1)] = None,
                output: OutputOpt = None) -> None:
    """List state-transition events, following pagination."""
    st = state(ctx, output)
    params = {"resource_id": resource_id, "resource_type": resource_type, "since": since}
    items = st.api().paginate("/v1/events", {k: v for k, v in params.items() if v}, limit=limit)
    emit_list(st, items, EVENT_COLUMNS)


@accounts.command("create")
def accounts_create(ctx: typer.Context, name: str, output: OutputOpt = None) -> None:
    """Create an account (admin); its API key is shown once."""
    st = state(ctx, output)
    emit_record(st, st.api().post("/v1/accounts", json={"name": name}))


@accounts.command("list")
def accounts_list(ctx: typer.Context, output: OutputOpt = None) -> None:
    """List accounts (admin)."""
    st = state(ctx, output)
    emit_list(st, st.api().paginate("/v1/accounts"), ACCOUNT_COLUMNS)


@accounts.command("whoami")
def accounts_whoami(ctx: typer.Context, output: OutputOpt = None) -> None:
    """Show the caller's own account."""
    st = state(ctx, output)
    emit_record(st, st.api().get("/v1/account"))
