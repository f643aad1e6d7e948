"""The console's networking pages in headless Chromium (controller/console/static/js/networks.js):
build a public subnet step by step (VPC -> subnet -> internet gateway attached -> route table
with 0.0.0.0/0 to it -> subnet associated -> elastic IP allocated and associated with an
instance), then take things apart again (NAT gateway, disassociate, release, remove route,
detach, delete). Refused actions (a VPC CIDR that is markup, host bits, an overlapping subnet, a
VPC with dependencies) show the API's error verbatim and change nothing; each step is checked
against the API. One served cloud and one browser for the module."""
from __future__ import annotations

import re

import pytest

from tests.functional.console_browser_support import ServedCloud, browser_page, sign_in

playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.browser, pytest.mark.slow]
PASSWORD = "networks-password-123"
# At most 18 characters (the API's CIDR field), and an element that runs script when inserted.
MARKUP = "<svg onload=f()>"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    s = ServedCloud(tmp_path_factory.mktemp("console-networks"))
    with s.lock:
        c = s.cloud
        c.image(name="kumo-tiny")
        c.add_host("host-1")
        key = c.admin.post("/v1/accounts", json={"name": "net"}).json()["api_key"]
        s.account = c.client(key)
        assert s.account.post("/v1/account/users", json={
            "username": "netuser", "password": PASSWORD}).status_code == 201
    s.state = {}
    yield s
    s.close()


@pytest.fixture
def page(browser, served):
    with browser_page(browser, timeout_ms=15_000) as pg:
        sign_in(pg, served.url, username="netuser", password=PASSWORD)
        yield pg


def _get(served, path: str, **params) -> list[dict]:
    r = served.account.get(path, params=params)
    assert r.status_code == 200, r.text
    return r.json()["items"]


def _one(served, path: str) -> dict:
    r = served.account.get(path)
    assert r.status_code == 200, r.text
    return r.json()


def _refusal(served, method: str, path: str, body: dict) -> str:
    """What the API answers to this refused request, as the console must show it (the request
    changes nothing, so asking the API directly is harmless)."""
    r = served.account.request(method, path, json=body)
    assert 400 <= r.status_code < 500, r.text
    e = r.json()["error"]
    return f"{e['code']}: {e['message']}"


def _go(page, served, route: str, heading: str) -> None:
    page.goto(f"{served.url}/console/#{route}")
    playwright_api.expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()


def test_build_a_public_subnet_step_by_step(page, served):
    expect = playwright_api.expect
    st = served.state

    # VPCs: a CIDR that is markup is refused with the API's message, shown as text.
    _go(page, served, "/vpcs", "VPCs")
    expect(page.locator("#vpcs tbody tr[data-vpc-id]")).to_have_count(1)  # the default VPC
    before = _get(served, "/v1/vpcs")
    page.get_by_label("IPv4 CIDR block", exact=True).fill(MARKUP)
    page.get_by_role("button", name="Create VPC").click()
    alert = page.get_by_role("alert")
    expect(alert).to_have_text(_refusal(served, "POST", "/v1/vpcs", {"cidr_block": MARKUP}))
    assert MARKUP in alert.inner_text()
    assert page.locator("main svg").count() == 0
    page.get_by_label("IPv4 CIDR block", exact=True).fill("10.20.0.1/16")
    page.get_by_role("button", name="Create VPC").click()
    expect(alert).to_have_text(_refusal(served, "POST", "/v1/vpcs", {"cidr_block": "10.20.0.1/16"}))
    assert _get(served, "/v1/vpcs") == before

    page.get_by_label("IPv4 CIDR block", exact=True).fill("10.20.0.0/16")
    page.get_by_role("button", name="Create VPC").click()
    page.wait_for_url(re.compile(r"#/vpcs/vpc-[0-9a-f]{17}$"))
    vpc_id = page.url.rsplit("/", 1)[1]
    st["vpc"] = vpc_id
    expect(page.get_by_role("heading", name=vpc_id)).to_be_visible()
    vpc = _one(served, f"/v1/vpcs/{vpc_id}")
    assert vpc["cidr_block"] == "10.20.0.0/16" and not vpc["is_default"]
    # Its page links its main route table and its default security group.
    [sg] = _get(served, "/v1/security-groups", vpc_id=vpc_id)
    expect(page.locator("#vpc-sgs-t").get_by_role("link", name=sg["group_id"])).to_be_visible()
    expect(page.locator("#vpc-rtbs-t").get_by_role("link", name=vpc["main_route_table_id"])).to_be_visible()

    # Subnets: create one, refuse an overlapping one, turn on auto-assign.
    _go(page, served, "/subnets", "Subnets")
    page.get_by_label("VPC", exact=True).select_option(vpc_id)
    page.get_by_label("IPv4 CIDR block", exact=True).fill("10.20.1.0/24")
    page.get_by_role("button", name="Create subnet").click()
    row = page.locator("#subnets tbody tr", has_text="10.20.1.0/24")
    expect(row).to_have_count(1)
    [subnet] = _get(served, "/v1/subnets", vpc_id=vpc_id)
    st["subnet"] = subnet_id = subnet["subnet_id"]
    assert subnet["cidr_block"] == "10.20.1.0/24" and not subnet["map_public_ip_on_launch"]
    expect(row.locator('td[data-label="Free addresses"]')).to_have_text(str(subnet["available_ip_address_count"]))
    page.get_by_label("VPC", exact=True).select_option(vpc_id)
    page.get_by_label("IPv4 CIDR block", exact=True).fill("10.20.1.128/25")
    page.get_by_role("button", name="Create subnet").click()
    expected = _refusal(served, "POST", "/v1/subnets", {"vpc_id": vpc_id, "cidr_block": "10.20.1.128/25"})
    assert expected.startswith("InvalidSubnet.Conflict")
    expect(page.get_by_role("alert")).to_have_text(expected)
    assert len(_get(served, "/v1/subnets", vpc_id=vpc_id)) == 1
    page.get_by_role("button", name=f"Turn on auto-assign public IP for {subnet_id}").click()
    expect(row.locator('td[data-label="Auto-assign public IP"]')).to_have_text("yes")
    assert _one(served, f"/v1/subnets/{subnet_id}")["map_public_ip_on_launch"] is True

    # Gateways: create an internet gateway and attach it to the VPC.
    _go(page, served, "/gateways", "Gateways")
    old = {g["internet_gateway_id"] for g in _get(served, "/v1/internet-gateways")}
    page.get_by_role("button", name="Create internet gateway").click()
    expect(page.locator("#igws tbody tr[data-igw-id]")).to_have_count(len(old) + 1)
    [igw_id] = {g["internet_gateway_id"] for g in _get(served, "/v1/internet-gateways")} - old
    st["igw"] = igw_id
    page.get_by_label("Internet gateway", exact=True).select_option(igw_id)
    page.get_by_label("VPC", exact=True).select_option(vpc_id)
    page.get_by_role("button", name="Attach to VPC").click()
    expect(page.locator(f'#igws tr[data-igw-id="{igw_id}"] td[data-label="State"]')).to_have_text("attached")
    assert _one(served, f"/v1/internet-gateways/{igw_id}")["vpc_id"] == vpc_id

    # Route tables: a new table, a refused route, 0.0.0.0/0 to the gateway, the subnet associated.
    _go(page, served, "/route-tables", "Route tables")
    page.get_by_label("VPC", exact=True).select_option(vpc_id)
    page.get_by_role("button", name="Create route table").click()
    page.wait_for_url(re.compile(r"#/route-tables/rtb-[0-9a-f]{17}$"))
    rtb_id = st["rtb"] = page.url.rsplit("/", 1)[1]
    expect(page.get_by_role("heading", name=rtb_id)).to_be_visible()
    assert _one(served, f"/v1/route-tables/{rtb_id}")["vpc_id"] == vpc_id
    routes = page.locator("#routes")
    expect(routes.locator("tbody tr[data-destination]")).to_have_count(1)  # local
    page.get_by_label("Target", exact=True).select_option(igw_id)
    page.get_by_label("Destination", exact=True).fill(MARKUP)
    page.get_by_role("button", name="Add route").click()
    expect(routes.get_by_role("alert")).to_have_text(_refusal(
        served, "POST", f"/v1/route-tables/{rtb_id}/routes",
        {"destination_cidr_block": MARKUP, "gateway_id": igw_id}))
    assert page.locator("main svg").count() == 0
    page.get_by_label("Destination", exact=True).fill("0.0.0.0/0")
    page.get_by_role("button", name="Add route").click()
    expect(routes.locator('tr[data-destination="0.0.0.0/0"] td[data-label="Target"]')).to_have_text(igw_id)
    rtb = _one(served, f"/v1/route-tables/{rtb_id}")
    assert {(r["destination_cidr_block"], r["target"], r["state"]) for r in rtb["routes"]} == {
        ("10.20.0.0/16", "local", "active"), ("0.0.0.0/0", igw_id, "active")}
    page.get_by_label("Subnet", exact=True).select_option(subnet_id)
    page.get_by_role("button", name="Associate subnet").click()
    expect(page.locator(f'#associations tr[data-subnet-id="{subnet_id}"]')).to_have_count(1)
    s = _one(served, f"/v1/subnets/{subnet_id}")
    assert s["route_table_id"] == rtb_id and s["public"] is True

    # Elastic IPs: allocate one and associate it with an instance of the subnet.
    with served.lock:
        st["instance"] = iid = served.cloud.launch(served.account, subnet_id=subnet_id)
    _go(page, served, "/elastic-ips", "Elastic IPs")
    page.get_by_role("button", name="Allocate elastic IP").click()
    expect(page.locator("#elastic-ips tbody tr[data-allocation-id]")).to_have_count(1)
    [eip] = _get(served, "/v1/elastic-ips")
    st["eip"] = eip["allocation_id"]
    page.get_by_label("Elastic IP", exact=True).select_option(eip["allocation_id"])
    page.get_by_label("Instance", exact=True).select_option(iid)
    page.get_by_role("button", name="Associate", exact=True).click()
    expect(page.locator("#elastic-ips tbody tr", has_text=eip["public_ip"]).get_by_role(
        "link", name=iid)).to_be_visible()
    assert _one(served, f"/v1/elastic-ips/{eip['allocation_id']}")["instance_id"] == iid


def test_take_it_apart_with_refusals_shown(page, served):
    expect = playwright_api.expect
    st = served.state
    if "eip" not in st:
        pytest.skip("needs the network built by the test before")
    vpc_id, subnet_id, igw_id, rtb_id = st["vpc"], st["subnet"], st["igw"], st["rtb"]

    # A VPC with subnets and gateways: the API's DependencyViolation, and the VPC stays.
    _go(page, served, f"/vpcs/{vpc_id}", vpc_id)
    page.get_by_role("button", name=f"Delete VPC {vpc_id}").click()
    page.get_by_role("button", name=f"Confirm: delete VPC {vpc_id}").click()
    expect(page.get_by_role("alert")).to_have_text(_refusal(served, "DELETE", f"/v1/vpcs/{vpc_id}", None))
    assert _one(served, f"/v1/vpcs/{vpc_id}")["state"] == "available"

    # Elastic IP: disassociate, then release (two clicks).
    _go(page, served, "/elastic-ips", "Elastic IPs")
    eip = _one(served, f"/v1/elastic-ips/{st['eip']}")
    page.get_by_role("button", name=f"Disassociate {eip['public_ip']}").click()
    expect(page.get_by_role("button", name=f"Disassociate {eip['public_ip']}")).to_have_count(0)
    assert _one(served, f"/v1/elastic-ips/{st['eip']}")["instance_id"] is None
    page.get_by_role("button", name=f"Release {eip['public_ip']}").click()
    page.get_by_role("button", name=f"Confirm: release {eip['public_ip']}").click()
    expect(page.locator("#elastic-ips tbody tr[data-allocation-id]")).to_have_count(0)
    assert served.account.get(f"/v1/elastic-ips/{st['eip']}").status_code == 404

    # NAT gateway in the public subnet with a fresh elastic IP; then deleted.
    with served.lock:
        alloc = served.account.post("/v1/elastic-ips").json()["allocation_id"]
    _go(page, served, "/gateways", "Gateways")
    page.get_by_label("Subnet", exact=True).select_option(subnet_id)
    page.get_by_label("Elastic IP", exact=True).select_option(alloc)
    page.get_by_role("button", name="Create NAT gateway").click()
    expect(page.locator("#nats tbody tr[data-nat-id]")).to_have_count(1)
    [nat] = _get(served, "/v1/nat-gateways", vpc_id=vpc_id)
    assert nat["subnet_id"] == subnet_id and nat["allocation_id"] == alloc
    assert nat["state"] in ("pending", "available")
    # Detaching the gateway while the VPC has a NAT gateway: refused, shown, nothing changed.
    page.get_by_role("button", name=f"Detach {igw_id}").click()
    expect(page.locator("#internet-gateways").get_by_role("alert")).to_have_text(_refusal(
        served, "POST", f"/v1/internet-gateways/{igw_id}/detach", {"vpc_id": vpc_id}))
    assert _one(served, f"/v1/internet-gateways/{igw_id}")["vpc_id"] == vpc_id
    nid = nat["nat_gateway_id"]
    page.get_by_role("button", name=f"Delete {nid}").click()
    page.get_by_role("button", name=f"Confirm: delete {nid}").click()
    expect(page.get_by_role("button", name=f"Delete {nid}")).to_have_count(0)
    assert _one(served, f"/v1/nat-gateways/{nid}")["state"] in ("deleting", "deleted")

    # Route table: remove the route, disassociate the subnet, delete the table.
    _go(page, served, f"/route-tables/{rtb_id}", rtb_id)
    page.get_by_role("button", name="Remove route 0.0.0.0/0").click()
    expect(page.locator('#routes tr[data-destination="0.0.0.0/0"]')).to_have_count(0)
    assert [r["target"] for r in _one(served, f"/v1/route-tables/{rtb_id}")["routes"]] == ["local"]
    page.get_by_role("button", name=f"Disassociate {subnet_id}").click()
    expect(page.locator(f'#associations tr[data-subnet-id="{subnet_id}"]')).to_have_count(0)
    assert _one(served, f"/v1/subnets/{subnet_id}")["route_table_id"] != rtb_id
    page.get_by_role("button", name=f"Delete route table {rtb_id}").click()
    page.get_by_role("button", name=f"Confirm: delete route table {rtb_id}").click()
    expect(page.get_by_role("heading", name="Route tables", exact=True)).to_be_visible()
    assert served.account.get(f"/v1/route-tables/{rtb_id}").status_code == 404

    # Internet gateway: detach, delete.
    _go(page, served, "/gateways", "Gateways")
    page.get_by_role("button", name=f"Detach {igw_id}").click()
    expect(page.locator(f'#igws tr[data-igw-id="{igw_id}"] td[data-label="State"]')).to_have_text("available")
    assert _one(served, f"/v1/internet-gateways/{igw_id}")["vpc_id"] is None
    page.get_by_role("button", name=f"Delete {igw_id}").click()
    page.get_by_role("button", name=f"Confirm: delete {igw_id}").click()
    expect(page.locator(f'#igws tr[data-igw-id="{igw_id}"]')).to_have_count(0)
    assert served.account.get(f"/v1/internet-gateways/{igw_id}").status_code == 404

    # Subnets: one holding an instance's address is refused; an empty one is deleted.
    _go(page, served, "/subnets", "Subnets")
    page.get_by_role("button", name=f"Delete {subnet_id}").click()
    page.get_by_role("button", name=f"Confirm: delete {subnet_id}").click()
    expect(page.get_by_role("alert")).to_have_text(_refusal(served, "DELETE", f"/v1/subnets/{subnet_id}", None))
    page.get_by_label("VPC", exact=True).select_option(vpc_id)
    page.get_by_label("IPv4 CIDR block", exact=True).fill("10.20.9.0/28")
    page.get_by_role("button", name="Create subnet").click()
    row = page.locator("#subnets tbody tr", has_text="10.20.9.0/28")
    expect(row).to_have_count(1)
    [spare] = [s["subnet_id"] for s in _get(served, "/v1/subnets", vpc_id=vpc_id) if s["cidr_block"] == "10.20.9.0/28"]
    page.get_by_role("button", name=f"Delete {spare}").click()
    page.get_by_role("button", name=f"Confirm: delete {spare}").click()
    expect(row).to_have_count(0)
    assert served.account.get(f"/v1/subnets/{spare}").status_code == 404

    # VPCs: an empty VPC is deleted from the list.
    with served.lock:
        spare_vpc = served.account.post("/v1/vpcs", json={"cidr_block": "10.99.0.0/16"}).json()["vpc_id"]
    _go(page, served, "/vpcs", "VPCs")
    page.get_by_role("button", name=f"Delete {spare_vpc}").click()
    page.get_by_role("button", name=f"Confirm: delete {spare_vpc}").click()
    expect(page.locator(f'#vpcs tr[data-vpc-id="{spare_vpc}"]')).to_have_count(0)
    assert served.account.get(f"/v1/vpcs/{spare_vpc}").status_code == 404
