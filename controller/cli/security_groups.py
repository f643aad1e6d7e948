"""`kumo security-groups ...`: security groups and their rules (REST /v1/security-groups).
Output is the API's objects (`--output json`) or tables; rule input is sent as typed fields
(protocol, ports, ICMP type/code, one peer) and validated by the API."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from .context import Output, OutputOpt, state
from .networks import _seg
from .output import emit_list, emit_record

app = typer.Typer(help="Security groups: stateful firewall rules for instances in a VPC.",
                  no_args_is_help=True)

GROUP_COLUMNS = [("GROUP", "group_id"), ("NAME", "group_name"), ("VPC", "vpc_id"),
                 ("DEFAULT", "is_default"), ("INGRESS", lambda g: len(g.get("ingress_rules", []))),
                 ("EGRESS", lambda g: len(g.get("egress_rules", []))),
                 ("DESCRIPTION", "description")]
GROUP_FIELDS = [(h, c) for h, c in GROUP_COLUMNS if h not in ("INGRESS", "EGRESS")]


def _ports(r: dict) -> str:
    if r.get("protocol") in ("tcp", "udp"):
        a, b = r.get("from_port"), r.get("to_port")
        return str(a) if a == b else f"{a}-{b}"
    if r.get("protocol") == "icmp":
        return f"type {r.get('icmp_type')} code {r.get('icmp_code')}"
    return "all"


RULE_COLUMNS = [("RULE", "rule_id"), ("DIRECTION", "direction"), ("PROTOCOL", "protocol"),
                ("PORTS", _ports), ("PEER", lambda r: r.get("cidr_ipv4") or r.get("peer_group_id")),
                ("DESCRIPTION", "description")]

IdArg = Annotated[str, typer.Argument(help="Security group id (sg-...).")]
EgressOpt = Annotated[bool, typer.Option("--egress/--ingress",
                                         help="Outbound rules (default: inbound).")]
ProtocolOpt = Annotated[Optional[str], typer.Option("--protocol", "-p",
                                                    help="tcp, udp, icmp or all (-1).")]
PortOpt = Annotated[Optional[str], typer.Option("--port", help="tcp/udp port or range: 22, 1000-2000.")]
IcmpTypeOpt = Annotated[Optional[int], typer.Option("--icmp-type", help="ICMP type (-1 = any).")]
IcmpCodeOpt = Annotated[Optional[int], typer.Option("--icmp-code", help="ICMP code (-1 = any).")]
CidrOpt = Annotated[Optional[str], typer.Option("--cidr", help="Peer IPv4 CIDR, e.g. 10.0.0.0/8.")]
PeerOpt = Annotated[Optional[str], typer.Option("--peer-group",
                                                help="Peer security group of the same VPC.")]
DescOpt = Annotated[Optional[str], typer.Option("--description")]


def _port_range(port: Optional[str]) -> tuple[Optional[int], Optional[int]]:
    if port is None:
        return None, None
    lo, sep, hi = port.partition("-")
    try:
        return (int(lo), int(hi)) if sep else (int(lo), int(lo))
    except ValueError:
        raise typer.BadParameter(f"invalid port {port!r}: N or N-M", param_hint="--port") from None


def _rule(protocol: Optional[str], port: Optional[str], icmp_type: Optional[int],
          icmp_code: Optional[int], cidr: Optional[str], peer: Optional[str],
          description: Optional[str]) -> dict:
    if not protocol:
        raise typer.BadParameter("a rule needs --protocol", param_hint="--protocol")
    from_port, to_port = _port_range(port)
    rule = {"protocol": protocol, "from_port": from_port, "to_port": to_port,
            "icmp_type": icmp_type, "icmp_code": icmp_code, "cidr_ipv4": cidr,
            "peer_group_id": peer, "description": description}
    return {k: v for k, v in rule.items() if v is not None}


def _show_group(st, group: dict) -> None:
    if st.output == Output.json:
        emit_record(st, group)
        return
    emit_record(st, group, GROUP_FIELDS)
    emit_list(st, group.get("ingress_rules", []) + group.get("egress_rules", []), RULE_COLUMNS,
              title="rules")


def _show_change(st, change: dict) -> None:
    if st.output == Output.json:
        emit_record(st, change)
    else:
        emit_list(st, change.get("rules", []), RULE_COLUMNS)


@app.command("list")
def sg_list(ctx: typer.Context,
            vpc_id: Annotated[Optional[str], typer.Option("--vpc-id", help="Only this VPC's.")] = None,
            name: Annotated[Optional[str], typer.Option("--name", help="Only groups so named.")] = None,
            output: OutputOpt = None) -> None:
    """List security groups."""
    st = state(ctx, output)
    params = {k: v for k, v in {"vpc_id": vpc_id, "group_name": name}.items() if v}
    emit_list(st, st.api().paginate("/v1/security-groups", params), GROUP_COLUMNS)


@app.command("describe")
def sg_describe(ctx: typer.Context, group_id: IdArg, output: OutputOpt = None) -> None:
    """Show one group and its rules."""
    st = state(ctx, output)
    _show_group(st, st.api().get(f"/v1/security-groups/{_seg(group_id)}"))


@app.command("create")
def sg_create(ctx: typer.Context, name: Annotated[str, typer.Option("--name")],
              description: DescOpt = None,
              vpc_id: Annotated[Optional[str], typer.Option(
                  "--vpc-id", help="Default: the account's default VPC.")] = None,
              output: OutputOpt = None) -> None:
    """Create a group: no inbound rules, all outbound allowed."""
    st = state(ctx, output)
    body = {"group_name": name, "description": description or "", "vpc_id": vpc_id}
    group = st.api().request("POST", "/v1/security-groups",
                             json={k: v for k, v in body.items() if v is not None})
    _show_group(st, group)


@app.command("delete")
def sg_delete(ctx: typer.Context, group_id: IdArg, output: OutputOpt = None) -> None:
    """Delete a group no instance or other group's rule uses."""
    st = state(ctx, output)
    _show_group(st, st.api().request("DELETE", f"/v1/security-groups/{_seg(group_id)}"))


@app.command("authorize")
def sg_authorize(ctx: typer.Context, group_id: IdArg, egress: EgressOpt = False,
                 protocol: ProtocolOpt = None, port: PortOpt = None,
                 icmp_type: IcmpTypeOpt = None, icmp_code: IcmpCodeOpt = None,
                 cidr: CidrOpt = None, peer_group: PeerOpt = None, description: DescOpt = None,
                 output: OutputOpt = None) -> None:
    """Add one rule (peer: --cidr or --peer-group)."""
    st = state(ctx, output)
    rule = _rule(protocol, port, icmp_type, icmp_code, cidr, peer_group, description)
    direction = "egress" if egress else "ingress"
    _show_change(st, st.api().request("POST", f"/v1/security-groups/{_seg(group_id)}/{direction}",
                                      json={"rules": [rule]}))


@app.command("revoke")
def sg_revoke(ctx: typer.Context, group_id: IdArg, egress: EgressOpt = False,
              rule_id: Annotated[Optional[list[str]], typer.Option(
                  "--rule-id", help="Rule id (sgr-...); repeatable.")] = None,
              protocol: ProtocolOpt = None, port: PortOpt = None,
              icmp_type: IcmpTypeOpt = None, icmp_code: IcmpCodeOpt = None,
              cidr: CidrOpt = None, peer_group: PeerOpt = None,
              output: OutputOpt = None) -> None:
    """Remove rules by --rule-id, or the one rule written exactly as when it was authorized."""
    st = state(ctx, output)
    if rule_id and protocol:
        raise typer.BadParameter("give --rule-id or a rule, not both", param_hint="--rule-id")
    body = {"rule_ids": list(rule_id)} if rule_id else {
        "rules": [_rule(protocol, port, icmp_type, icmp_code, cidr, peer_group, None)]}
    direction = "egress" if egress else "ingress"
    _show_change(st, st.api().request(
        "POST", f"/v1/security-groups/{_seg(group_id)}/{direction}/revoke", json=body))
