"""`kumo vpcs|subnets|igws|route-tables|eips|nat-gateways ...`: VPC networking resources (REST
/v1/vpcs, /v1/subnets, /v1/internet-gateways, /v1/route-tables, /v1/elastic-ips,
/v1/nat-gateways). Output is the API's objects (`--output json`) or tables."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from .context import OutputOpt, state
from .output import emit_list, emit_record

vpcs = typer.Typer(help="VPCs (every account has a default one).", no_args_is_help=True)
subnets = typer.Typer(help="Subnets of a VPC.", no_args_is_help=True)
igws = typer.Typer(help="Internet gateways.", no_args_is_help=True)
route_tables = typer.Typer(help="Route tables, routes and subnet associations.",
                           no_args_is_help=True)
eips = typer.Typer(help="Elastic IPs from the public pool.", no_args_is_help=True)
nat_gateways = typer.Typer(help="NAT gateways.", no_args_is_help=True)

VPC_COLUMNS = [("VPC", "vpc_id"), ("CIDR", "cidr_block"), ("STATE", "state"),
               ("DEFAULT", "is_default"), ("MAIN ROUTE TABLE", "main_route_table_id"),
               ("INTERNET GATEWAY", "internet_gateway_id")]
SUBNET_COLUMNS = [("SUBNET", "subnet_id"), ("VPC", "vpc_id"), ("CIDR", "cidr_block"),
                  ("PUBLIC", "public"), ("MAP PUBLIC IP", "map_public_ip_on_launch"),
                  ("FREE", "available_ip_address_count"), ("ROUTE TABLE", "route_table_id")]
IGW_COLUMNS = [("INTERNET GATEWAY", "internet_gateway_id"), ("STATE", "state"),
               ("VPC", "vpc_id")]
RTB_COLUMNS = [("ROUTE TABLE", "route_table_id"), ("VPC", "vpc_id"), ("MAIN", "main"),
               ("ROUTES", lambda r: ",".join(f"{x['destination_cidr_block']}->{x['target']}"
                                             + ("(blackhole)" if x["state"] != "active" else "")
                                             for x in r.get("routes", []))),
               ("SUBNETS", lambda r: [a["subnet_id"] for a in r.get("associations", [])])]
EIP_COLUMNS = [("ALLOCATION", "allocation_id"), ("PUBLIC IP", "public_ip"),
               ("INSTANCE", "instance_id"), ("PRIVATE IP", "private_ip"),
               ("NAT GATEWAY", "nat_gateway_id"), ("ASSOCIATION", "association_id")]
NAT_COLUMNS = [("NAT GATEWAY", "nat_gateway_id"), ("STATE", "state"), ("VPC", "vpc_id"),
               ("SUBNET", "subnet_id"), ("PUBLIC IP", "public_ip"), ("PRIVATE IP", "private_ip")]

IdArg = Annotated[str, typer.Argument(help="Resource id.")]
VpcOpt = Annotated[Optional[str], typer.Option("--vpc-id", help="Only this VPC's.")]


def _seg(value: str) -> str:
    # Ids go into URL paths: refuse anything that would change the path.
    if not value or "/" in value or "?" in value or "#" in value or value in (".", ".."):
        raise typer.BadParameter(f"invalid id {value!r}")
    return value


def _list(ctx, output, path: str, columns, **params) -> None:
    st = state(ctx, output)
    emit_list(st, st.api().paginate(path, {k: v for k, v in params.items() if v}), columns)


def _get(ctx, output, path: str) -> None:
    st = state(ctx, output)
    emit_record(st, st.api().get(path))


def _call(ctx, output, method: str, path: str, body: dict | None = None, **params) -> None:
    st = state(ctx, output)
    emit_record(st, st.api().request(method, path, json=body, params=params))


# -- vpcs ----------------------------------------------------------------------------------------
@vpcs.command("list")
def vpcs_list(ctx: typer.Context, output: OutputOpt = None) -> None:
    """List VPCs."""
    _list(ctx, output, "/v1/vpcs", VPC_COLUMNS)


@vpcs.command("describe")
def vpcs_describe(ctx: typer.Context, vpc_id: IdArg, output: OutputOpt = None) -> None:
    """Show one VPC."""
    _get(ctx, output, f"/v1/vpcs/{_seg(vpc_id)}")


@vpcs.command("create")
def vpcs_create(ctx: typer.Context,
                cidr: Annotated[str, typer.Option("--cidr", help="IPv4 CIDR, /16 to /28.")],
                output: OutputOpt = None) -> None:
    """Create a VPC (with its main route table)."""
    _call(ctx, output, "POST", "/v1/vpcs", {"cidr_block": cidr})


@vpcs.command("delete")
def vpcs_delete(ctx: typer.Context, vpc_id: IdArg, output: OutputOpt = None) -> None:
    """Delete an empty VPC."""
    _call(ctx, output, "DELETE", f"/v1/vpcs/{_seg(vpc_id)}")


# -- subnets -------------------------------------------------------------------------------------
@subnets.command("list")
def subnets_list(ctx: typer.Context, vpc_id: VpcOpt = None, output: OutputOpt = None) -> None:
    """List subnets."""
    _list(ctx, output, "/v1/subnets", SUBNET_COLUMNS, vpc_id=vpc_id)


@subnets.command("describe")
def subnets_describe(ctx: typer.Context, subnet_id: IdArg, output: OutputOpt = None) -> None:
    """Show one subnet."""
    _get(ctx, output, f"/v1/subnets/{_seg(subnet_id)}")


@subnets.command("create")
def subnets_create(
        ctx: typer.Context, vpc_id: Annotated[str, typer.Option("--vpc-id")],
        cidr: Annotated[str, typer.Option("--cidr", help="Inside the VPC's CIDR, /16 to /28.")],
        map_public_ip: Annotated[bool, typer.Option(
            "--map-public-ip-on-launch/--no-map-public-ip-on-launch")] = False,
        output: OutputOpt = None) -> None:
    """Create a subnet."""
    _call(ctx, output, "POST", "/v1/subnets", {"vpc_id": vpc_id, "cidr_block": cidr,
                                               "map_public_ip_on_launch": map_public_ip})


@subnets.command("modify")
def subnets_modify(
        ctx: typer.Context, subnet_id: IdArg,
        map_public_ip: Annotated[bool, typer.Option(
            "--map-public-ip-on-launch/--no-map-public-ip-on-launch")],
        output: OutputOpt = None) -> None:
    """Change whether instances launched here get a public IP."""
    _call(ctx, output, "PATCH", f"/v1/subnets/{_seg(subnet_id)}",
          {"map_public_ip_on_launch": map_public_ip})


@subnets.command("delete")
def subnets_delete(ctx: typer.Context, subnet_id: IdArg, output: OutputOpt = None) -> None:
    """Delete a subnet with no addresses in use."""
    _call(ctx, output, "DELETE", f"/v1/subnets/{_seg(subnet_id)}")


# -- internet gateways ---------------------------------------------------------------------------
@igws.command("list")
def igws_list(ctx: typer.Context, output: OutputOpt = None) -> None:
    """List internet gateways."""
    _list(ctx, output, "/v1/internet-gateways", IGW_COLUMNS)


@igws.command("describe")
def igws_describe(ctx: typer.Context, igw_id: IdArg, output: OutputOpt = None) -> None:
    """Show one internet gateway."""
    _get(ctx, output, f"/v1/internet-gateways/{_seg(igw_id)}")


@igws.command("create")
def igws_create(ctx: typer.Context, output: OutputOpt = None) -> None:
    """Create a (detached) internet gateway."""
    _call(ctx, output, "POST", "/v1/internet-gateways")


@igws.command("attach")
def igws_attach(ctx: typer.Context, igw_id: IdArg,
                vpc_id: Annotated[str, typer.Option("--vpc-id")],
                output: OutputOpt = None) -> None:
    """Attach an internet gateway to a VPC."""
    _call(ctx, output, "POST", f"/v1/internet-gateways/{_seg(igw_id)}/attach", {"vpc_id": vpc_id})


@igws.command("detach")
def igws_detach(ctx: typer.Context, igw_id: IdArg,
                vpc_id: Annotated[str, typer.Option("--vpc-id")],
                output: OutputOpt = None) -> None:
    """Detach an internet gateway from its VPC."""
    _call(ctx, output, "POST", f"/v1/internet-gateways/{_seg(igw_id)}/detach", {"vpc_id": vpc_id})


@igws.command("delete")
def igws_delete(ctx: typer.Context, igw_id: IdArg, output: OutputOpt = None) -> None:
    """Delete a detached internet gateway."""
    _call(ctx, output, "DELETE", f"/v1/internet-gateways/{_seg(igw_id)}")


# -- route tables --------------------------------------------------------------------------------
@route_tables.command("list")
def rtb_list(ctx: typer.Context, vpc_id: VpcOpt = None, output: OutputOpt = None) -> None:
    """List route tables."""
    _list(ctx, output, "/v1/route-tables", RTB_COLUMNS, vpc_id=vpc_id)


@route_tables.command("describe")
def rtb_describe(ctx: typer.Context, rtb_id: IdArg, output: OutputOpt = None) -> None:
    """Show one route table with its routes and associations."""
    _get(ctx, output, f"/v1/route-tables/{_seg(rtb_id)}")


@route_tables.command("create")
def rtb_create(ctx: typer.Context, vpc_id: Annotated[str, typer.Option("--vpc-id")],
               output: OutputOpt = None) -> None:
    """Create a custom route table (with the VPC's local route)."""
    _call(ctx, output, "POST", "/v1/route-tables", {"vpc_id": vpc_id})


@route_tables.command("delete")
def rtb_delete(ctx: typer.Context, rtb_id: IdArg, output: OutputOpt = None) -> None:
    """Delete a custom route table with no associations."""
    _call(ctx, output, "DELETE", f"/v1/route-tables/{_seg(rtb_id)}")


@route_tables.command("add-route")
def rtb_add_route(
        ctx: typer.Context, rtb_id: IdArg,
        destination: Annotated[str, typer.Option("--destination", help="e.g. 0.0.0.0/0")],
        gateway_id: Annotated[Optional[str], typer.Option("--gateway-id")] = None,
        nat_gateway_id: Annotated[Optional[str], typer.Option("--nat-gateway-id")] = None,
        output: OutputOpt = None) -> None:
    """Route a destination to an internet gateway or a NAT gateway."""
    if bool(gateway_id) == bool(nat_gateway_id):
        raise typer.BadParameter("give exactly one of --gateway-id or --nat-gateway-id")
    body = {"destination_cidr_block": destination}
    body.update({"gateway_id": gateway_id} if gateway_id else {"nat_gateway_id": nat_gateway_id})
    _call(ctx, output, "POST", f"/v1/route-tables/{_seg(rtb_id)}/routes", body)


@route_tables.command("delete-route")
def rtb_delete_route(ctx: typer.Context, rtb_id: IdArg,
                     destination: Annotated[str, typer.Option("--destination")],
                     output: OutputOpt = None) -> None:
    """Delete a route (the local route stays)."""
    _call(ctx, output, "DELETE", f"/v1/route-tables/{_seg(rtb_id)}/routes",
          destination_cidr_block=destination)


@route_tables.command("associate")
def rtb_associate(ctx: typer.Context, rtb_id: IdArg,
                  subnet_id: Annotated[str, typer.Option("--subnet-id")],
                  output: OutputOpt = None) -> None:
    """Use this table for a subnet (instead of the main table)."""
    _call(ctx, output, "POST", f"/v1/route-tables/{_seg(rtb_id)}/associations",
          {"subnet_id": subnet_id})


@route_tables.command("disassociate")
def rtb_disassociate(ctx: typer.Context,
                     association_id: Annotated[str, typer.Argument(help="rtbassoc-... id.")],
                     output: OutputOpt = None) -> None:
    """Return a subnet to its VPC's main table."""
    _call(ctx, output, "DELETE", f"/v1/route-table-associations/{_seg(association_id)}")


# -- elastic IPs ---------------------------------------------------------------------------------
@eips.command("list")
def eips_list(ctx: typer.Context, output: OutputOpt = None) -> None:
    """List elastic IPs."""
    _list(ctx, output, "/v1/elastic-ips", EIP_COLUMNS)


@eips.command("describe")
def eips_describe(ctx: typer.Context, allocation_id: IdArg, output: OutputOpt = None) -> None:
    """Show one elastic IP."""
    _get(ctx, output, f"/v1/elastic-ips/{_seg(allocation_id)}")


@eips.command("allocate")
def eips_allocate(ctx: typer.Context, output: OutputOpt = None) -> None:
    """Allocate an address from the public pool."""
    _call(ctx, output, "POST", "/v1/elastic-ips")


@eips.command("associate")
def eips_associate(
        ctx: typer.Context, allocation_id: IdArg,
        instance_id: Annotated[str, typer.Option("--instance-id")],
        private_ip: Annotated[Optional[str], typer.Option("--private-ip")] = None,
        allow_reassociation: Annotated[bool, typer.Option("--allow-reassociation")] = False,
        output: OutputOpt = None) -> None:
    """Associate an elastic IP with one of your instances."""
    body = {"instance_id": instance_id, "allow_reassociation": allow_reassociation}
    if private_ip:
        body["private_ip"] = private_ip
    _call(ctx, output, "POST", f"/v1/elastic-ips/{_seg(allocation_id)}/associate", body)


@eips.command("disassociate")
def eips_disassociate(ctx: typer.Context, allocation_id: IdArg, output: OutputOpt = None) -> None:
    """Disassociate an elastic IP from its instance."""
    _call(ctx, output, "POST", f"/v1/elastic-ips/{_seg(allocation_id)}/disassociate")


@eips.command("release")
def eips_release(ctx: typer.Context, allocation_id: IdArg, output: OutputOpt = None) -> None:
    """Give an (unassociated) elastic IP back to the pool."""
    _call(ctx, output, "DELETE", f"/v1/elastic-ips/{_seg(allocation_id)}")


# -- NAT gateways --------------------------------------------------------------------------------
@nat_gateways.command("list")
def nat_list(ctx: typer.Context, vpc_id: VpcOpt = None, output: OutputOpt = None) -> None:
    """List NAT gateways (deleted ones included, as in EC2)."""
    _list(ctx, output, "/v1/nat-gateways", NAT_COLUMNS, vpc_id=vpc_id)


@nat_gateways.command("describe")
def nat_describe(ctx: typer.Context, nat_gateway_id: IdArg, output: OutputOpt = None) -> None:
    """Show one NAT gateway."""
    _get(ctx, output, f"/v1/nat-gateways/{_seg(nat_gateway_id)}")


@nat_gateways.command("create")
def nat_create(ctx: typer.Context, subnet_id: Annotated[str, typer.Option("--subnet-id")],
               allocation_id: Annotated[str, typer.Option("--allocation-id")],
               output: OutputOpt = None) -> None:
    """Create a NAT gateway in a public subnet with an elastic IP."""
    _call(ctx, output, "POST", "/v1/nat-gateways",
          {"subnet_id": subnet_id, "allocation_id": allocation_id})


@nat_gateways.command("delete")
def nat_delete(ctx: typer.Context, nat_gateway_id: IdArg, output: OutputOpt = None) -> None:
    """Delete a NAT gateway (its elastic IP stays allocated)."""
    _call(ctx, output, "DELETE", f"/v1/nat-gateways/{_seg(nat_gateway_id)}")
