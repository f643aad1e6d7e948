"""Security groups end to end on the lab (issue 5) with real kumo-tiny guests and real packets: the
controller pushes each host's network document with its ports' groups, the agent enforces them with
nftables, and every check here is a packet sent inside lab namespaces (guests over SSH from their
VPC router namespace; the internet namespace with Python sockets) -- never the API's word.

One module-wide world, placed by disabling one host while launching on the other (admin API):

  account A, default VPC 172.31.0.0/16, default subnet 172.31.0.0/20
    group G: inbound tcp/22 from 0.0.0.0/0 only (tests add and remove rules)
    group O: inbound tcp/22 from 0.0.0.0/0 only (the non-member's group)
    m1 172.31.0.10 h1  [G]  elastic IP
    m2 172.31.0.20 h2  [G]  no public IP
    o1 172.31.0.30 h1  [O]  no public IP (the union test adds and removes G; the spoofer)
  account B, its default VPC (the same CIDR), default group opened for SSH and ICMP
    x1 172.31.0.40 h1  auto-assigned public IP (on m1's host: the lab's internet namespace does
                       not forward, so public-to-public traffic only flows within one host)

Negative checks run a probe loop for a whole window (>= 4 s, >= 3 attempts, every attempt must
fail). Timings (API call -> effective) are printed, never asserted. Tests run in file order and
build on each other (rules added by one are there for the next); the agent restart comes last.

Datagrams that reach a guest are counted by its kernel (Udp NoPorts in /proc/net/snmp: kumo-tiny's
busybox nc has no UDP mode), with a flood at an allowed port as the positive control each time.
"""
from __future__ import annotations

import re
import secrets
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agent.network import names
from tests.lab.guests import SSH_OPTS
from tests.lab.net_support import (CONVERGE, INET_SERVER, Listener, Vm, admin_api, http_cmd, ip_,
                                   launch_placed, new_account, ping_cmd)
from tests.lab.sg_support import (World, assert_inet_blocked, banner_cmd, dump_ruleset,
                                  flood, flood_result, inet_argv, inet_probe, inet_probe_stream,
                                  restart_agent)

pytestmark = [pytest.mark.lab, pytest.mark.slow]

SSH_RULE = {"protocol": "tcp", "from_port": 22, "to_port": 22, "cidr_ipv4": "0.0.0.0/0"}
UDP_ALLOWED, UDP_DENIED = 5001, 5002
FLOOD_RATE = 200.0  # datagrams per second (TCG guests are slow)


def _report(*lines: str) -> None:
    print("\n" + "\n".join(f"[sg-lab] {line}" for line in lines), flush=True)


def _parallel(*jobs):
    """Run (fn, *args) jobs at once (probe windows overlap to save wall time); their results."""
    with ThreadPoolExecutor(len(jobs)) as pool:
        futs = [pool.submit(fn, *args) for fn, *args in jobs]
        return [f.result() for f in futs]


# --- the world ------------------------------------------------------------------------------------
def _group(user, name: str, rules: list[dict]) -> str:
    g = user.call("POST", "/v1/security-groups", json={"group_name": name, "description": "sg lab"})
    if rules:
        user.call("POST", f"/v1/security-groups/{g['group_id']}/ingress", json={"rules": rules})
    return g["group_id"]


def build_world(lab, workdir: Path) -> World:
    tag = secrets.token_hex(3)
    w = World(lab=lab, admin=admin_api(lab), workdir=workdir)
    a = new_account(lab, w.admin, workdir / "keys-a", f"sg-a-{tag}")
    b = new_account(lab, w.admin, workdir / "keys-b", f"sg-b-{tag}")
    w.users += [a, b]
    key_a, key_b = a.key_pair(f"ka-{tag}"), b.key_pair(f"kb-{tag}")
    w.ids["vpc_a"] = [v for v in a.call("GET", "/v1/vpcs")["items"] if v["is_default"]][0]["vpc_id"]
    w.ids["vpc_b"] = [v for v in b.call("GET", "/v1/vpcs")["items"] if v["is_default"]][0]["vpc_id"]
    w.ids["G"] = _group(a, f"g-{tag}", [SSH_RULE])
    w.ids["O"] = _group(a, f"o-{tag}", [SSH_RULE])
    b.allow_admin_access(w.ids["vpc_b"])
    plan = [
        ("m1", a, key_a, "h1", dict(private_ip="172.31.0.10", associate_public_ip=False,
                                    security_group_ids=[w.ids["G"]])),
        ("o1", a, key_a, "h1", dict(private_ip="172.31.0.30", associate_public_ip=False,
                                    security_group_ids=[w.ids["O"]])),
        ("m2", a, key_a, "h2", dict(private_ip="172.31.0.20", associate_public_ip=False,
                                    security_group_ids=[w.ids["G"]])),
        ("x1", b, key_b, "h1", dict(private_ip="172.31.0.40")),
    ]
    launch_placed(w, plan)
    eip = a.call("POST", "/v1/elastic-ips")
    a.call("POST", f"/v1/elastic-ips/{eip['allocation_id']}/associate",
           json={"instance_id": w.vms["m1"].id})
    w.ids["eip"], w.ids["eip_ip"] = eip["allocation_id"], eip["public_ip"]
    for vm in w.vms.values():
        vm.refresh()
    return w


def teardown_world(w: World) -> None:
    errors = []
    for p in w.procs:
        try:
            p.stop()
        except Exception as e:  # noqa: BLE001
            errors.append(f"stop {p}: {e}")
    for user in w.users:
        user.terminate_all()
    for user in w.users:
        for inst in user.call("GET", "/v1/instances", params={"max_results": 1000})["items"]:
            try:
                user.wait(inst["instance_id"], "terminated", timeout=180)
            except AssertionError as e:
                errors.append(str(e))
    a = w.users[0]
    for gid in ("G", "O"):
        if gid in w.ids:
            r = a.api.delete(f"/v1/security-groups/{w.ids[gid]}")
            if r.status_code >= 400:
                errors.append(f"delete {gid}: {r.status_code} {r.text}")
    for user in w.users:
        for eip in user.call("GET", "/v1/elastic-ips")["items"]:
            if not eip.get("instance_id"):
                user.call("DELETE", f"/v1/elastic-ips/{eip['allocation_id']}")
        user.close()
    w.admin.close()
    assert not errors, errors


@pytest.fixture(scope="module")
def world(lab, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sg")
    workdir.chmod(0o755)
    w = None
    try:
        w = build_world(lab, workdir)
        yield w
    finally:
        if w is not None:
            teardown_world(w)


@pytest.fixture
def evidence(world, request):
    """When the test failed: each host's nft ruleset (JSON) and links, saved for the report (the
    call phase's failure is counted before fixtures are torn down)."""
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed > failed_before:
        for host in ("h1", "h2"):
            p = dump_ruleset(world.lab, host, world.workdir / f"{request.node.name}-{host}.json")
            _report(f"evidence: {p}")


def _rules(world, direction: str, rules: list[dict], revoke: bool = False) -> float:
    """Authorize (or revoke) rules of G; returns the wall time of the API call's start."""
    a, g = world.users[0], world.ids["G"]
    t0 = time.time()
    path = f"/v1/security-groups/{g}/{direction}" + ("/revoke" if revoke else "")
    a.call("POST", path, json={"rules": rules})
    return t0


ICMP_FROM_G = lambda g: {"protocol": "icmp", "icmp_type": -1, "peer_group_id": g}  # noqa: E731


def _first_reply(stream, since: float, timeout: float = CONVERGE) -> float:
    t, _ = stream.wait_line(lambda line: "bytes from" in line, timeout, since=since)
    return t


def _attempts(stream, t0: float) -> list[tuple[float, str]]:
    """(start of the attempt relative to t0, "OK"|"FAIL") from a loop printing S, then OK/FAIL."""
    seq, start = [], None
    for t, ln in stream.lines:
        if ln == "S":
            start = t
        elif ln in ("OK", "FAIL") and start is not None:
            seq.append((start - t0, ln))
    return seq


# --- tests ----------------------------------------------------------------------------------------
def test_placement(world):
    v = world.vms
    _report(*(f"{n}: {vm.id} {vm.d['vpc_id']} {vm.ip} host={vm.host} public={vm.d.get('public_ip')} "
              f"mac={vm.d['mac']} groups={vm.d['security_group_ids']}" for n, vm in sorted(v.items())))
    assert {n: vm.host for n, vm in v.items()} == {"m1": "h1", "o1": "h1", "m2": "h2", "x1": "h1"}
    assert v["m1"].d["public_ip"] == world.ids["eip_ip"] and v["x1"].d["public_ip"]
    assert v["m1"].d["security_group_ids"] == [world.ids["G"]]


def test_ssh_only_group_blocks_ping_between_members(world, evidence):
    v = world.vms
    # Positive controls: the path works (SSH between members across hosts is allowed).
    world.sh_until(v["m1"], banner_cmd(v["m2"].ip))
    world.sh_until(v["m2"], banner_cmd(v["m1"].ip))
    res = _parallel((world.negative, v["m1"], ping_cmd(v["m2"].ip)),
                    (world.negative, v["m2"], ping_cmd(v["m1"].ip)),
                    (world.negative, v["o1"], ping_cmd(v["m1"].ip)))
    _report(*res)


def test_icmp_rule_with_peer_group_admits_members_only(world, evidence):
    v, g = world.vms, world.ids["G"]
    # A continuous ping (one ICMP flow): nothing is answered until the rule lands.
    s = world.stream(v["m1"], f"ping -i 0.1 -w 60 {ip_(v['m2'].ip)}")
    time.sleep(2)
    assert not [ln for _, ln in s.lines if "bytes from" in ln], s.lines
    t0 = _rules(world, "ingress", [ICMP_FROM_G(g)])
    took = _first_reply(s, t0) - t0
    s.stop()
    world.sh_until(v["m2"], ping_cmd(v["m1"].ip))
    res = _parallel((world.negative, v["o1"], ping_cmd(v["m1"].ip)),
                    (world.negative, v["o1"], ping_cmd(v["m2"].ip)))
    _report(f"ICMP rule (peer {g}) authorized -> m1 pings m2 (cross host) after {took:.3f} s "
            f"(issue wants < 1 s)", *res)


def test_other_vpc_cannot_ping_a_member_public_ip(world, evidence):
    v, eip = world.vms, world.ids["eip_ip"]
    # Members ping each other; x1 (account B) reaches the internet and m1's SSH on its public IP.
    world.sh_until(v["m1"], ping_cmd(v["m2"].ip))
    world.sh_until(v["x1"], ping_cmd(INET_SERVER))
    world.sh_until(v["x1"], banner_cmd(eip))
    res = _parallel((world.negative, v["x1"], ping_cmd(eip)),
                    (world.sh_ok, v["m2"], ping_cmd(v["m1"].ip)))
    _report(res[0], "m2 -> m1 ping during the window: ok")


def test_union_of_groups_and_removal_from_a_running_instance(world, evidence):
    v, a = world.vms, world.users[0]
    o1, m1 = v["o1"], v["m1"]
    world.negative(o1, ping_cmd(m1.ip))
    s = world.stream(o1, f"ping -i 0.1 -w 60 {ip_(m1.ip)}")
    time.sleep(1)
    t0 = time.time()
    got = a.call("PUT", f"/v1/instances/{o1.id}/security-groups",
                 json={"security_group_ids": [world.ids["O"], world.ids["G"]]})
    took_add = _first_reply(s, t0) - t0
    s.stop()
    assert sorted(o1.refresh().d["security_group_ids"]) == sorted([world.ids["O"], world.ids["G"]]), got
    world.sh_until(m1, ping_cmd(o1.ip))  # m1 admits o1 as a G member, and o1 admits m1 (via G)
    # Removal: fresh pings (new ICMP flows; a tracked flow would survive, as in EC2), each attempt
    # announced with "S" so the test host knows when it started.
    loop = (f"i=0; while [ $i -lt 200 ]; do echo S; if {ping_cmd(m1.ip)} >/dev/null 2>&1; "
            f"then echo OK; else echo FAIL; fi; i=$((i+1)); done")
    s = world.stream(o1, loop)
    s.wait_line(lambda ln: ln == "OK", CONVERGE)
    t1 = time.time()
    a.call("PUT", f"/v1/instances/{o1.id}/security-groups",
           json={"security_group_ids": [world.ids["O"]]})
    s.wait_line(lambda ln: ln == "FAIL", CONVERGE, since=t1)
    s.stop()
    seq = _attempts(s, t1)
    last_ok = max(d for d, r in seq if r == "OK")
    first_fail = min(d for d, r in seq if r == "FAIL")
    res = _parallel((world.negative, o1, ping_cmd(m1.ip)), (world.negative, m1, ping_cmd(o1.ip)))
    _report(f"PUT [O, G] -> o1 pings m1 after {took_add:.3f} s",
            f"PUT [O] -> last successful ping started at {last_ok:+.3f} s, first failed one "
            f"at {first_fail:+.3f} s after the call", *res)


def test_http_from_the_internet_needs_the_rule(world, evidence):
    v, lab, eip = world.vms, world.lab, world.ids["eip_ip"]
    m1 = v["m1"]
    # A second HTTP server on 443 (busybox httpd, plain HTTP) in the guest.
    world.sh_ok(m1, "httpd -p 443 -h /srv/www")
    assert world.sh_until(m1, http_cmd("127.0.0.1", 443), lambda o: m1.id in o).strip() == m1.id
    res = _parallel((assert_inet_blocked, lab, eip, 80), (assert_inet_blocked, lab, eip, 443))
    s = inet_probe_stream(lab, eip, port=80, duration=CONVERGE, stop=f"match:{m1.id}")
    world.procs.append(s)
    time.sleep(0.5)
    t0 = _rules(world, "ingress", [
        {"protocol": "tcp", "from_port": 80, "to_port": 80, "cidr_ipv4": "0.0.0.0/0"},
        {"protocol": "tcp", "from_port": 443, "to_port": 443, "cidr_ipv4": "0.0.0.0/0"}])
    t, _ = s.wait_line(lambda ln: m1.id in ln, CONVERGE, since=t0)
    s.stop()
    r443 = inet_probe(lab, eip, port=443, duration=CONVERGE, stop=f"match:{m1.id}")
    assert r443[-1]["body"] == m1.id, r443[-3:]
    _report(*res, f"tcp/80 and tcp/443 authorized -> HTTP on {eip}:80 answers after {t - t0:.3f} s; "
                  f":443 answers too")


def test_revoking_egress_blocks_new_outbound_but_not_replies(world, evidence):
    v, lab, a, g = world.vms, world.lab, world.users[0], world.ids["G"]
    m1 = v["m1"]
    listener = Listener(lab, world.workdir, 18000 + secrets.randbelow(2000))
    world.procs.append(listener)
    egress = a.call("GET", f"/v1/security-groups/{g}")["egress_rules"]
    try:
        assert world.sh_until(m1, http_cmd(INET_SERVER, listener.port),
                              lambda o: o.strip()).strip() == world.ids["eip_ip"]
        loop = (f"i=0; while [ $i -lt 100 ]; do echo S; if {http_cmd(INET_SERVER, listener.port, 2)}"
                f" >/dev/null 2>&1; then echo OK; else echo FAIL; fi; sleep 0.1; i=$((i+1)); done")
        s = world.stream(m1, loop)
        s.wait_line(lambda ln: ln == "OK", CONVERGE)
        t0 = time.time()
        a.call("POST", f"/v1/security-groups/{g}/egress/revoke",
               json={"rule_ids": [r["rule_id"] for r in egress]})
        s.wait_line(lambda ln: ln == "FAIL", CONVERGE, since=t0)
        s.stop()
        seq = _attempts(s, t0)
        # (a blocked attempt lasts its 2 s timeout: a longer window keeps >= 3 attempts)
        res = _parallel((world.negative, m1, http_cmd(INET_SERVER, listener.port, 2), 8),
                        (world.negative, m1, ping_cmd(v["m2"].ip)))
        # Replies to allowed inbound connections still leave: a NEW SSH session from the internet
        # to the elastic IP works (stateful), as does our control session from the router.
        r = subprocess.run(
            inet_argv(lab, "ssh", "-i", str(m1.key), *SSH_OPTS,
                      f"root@{ip_(world.ids['eip_ip'])}", "cat /run/kumo/instance-id"),
            capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stdout.strip() == m1.id, (r.returncode, r.stdout, r.stderr)
        assert world.sh_ok(m1, "echo alive").strip() == "alive"
        _report(f"egress all revoked -> last successful outbound attempt started at "
                f"{max(d for d, r in seq if r == 'OK'):+.3f} s, first failed one at "
                f"{min(d for d, r in seq if r == 'FAIL'):+.3f} s after the call", *res,
                "internet -> elastic IP: new SSH session works with no egress rule")
    finally:
        a.call("POST", f"/v1/security-groups/{g}/egress",
               json={"rules": [{"protocol": "all", "cidr_ipv4": "0.0.0.0/0"}]})
    assert world.sh_until(m1, http_cmd(INET_SERVER, listener.port),
                          lambda o: o.strip()).strip() == world.ids["eip_ip"]


def test_spoofed_ip_mac_and_arp_are_dropped(world, evidence):
    v = world.vms
    o1, m1, m2 = v["o1"], v["m1"], v["m2"]
    gw = "172.31.0.1"
    rmac = names.router_mac(o1.d["vpc_id"]).lower()
    rns = world.rns_argv(o1)
    # o1 is back in [O] only; the router answers its pings (the router is no security-group port).
    world.sh_until(o1, ping_cmd(gw))
    # --- ARP poisoning: m1 (same host as o1) holds entries for m2 and the router.
    world.sh_until(m1, f"{ping_cmd(m2.ip)} && {ping_cmd(gw)}")
    before = world.guest_arp(m1)
    assert before.get(m2.ip) == m2.d["mac"].lower() and before.get(gw) == rmac, before
    out = world.sh_ok(o1, "echo 1 > /proc/sys/net/ipv4/ip_nonlocal_bind; "
                          f"for t in {ip_(m2.ip)} {ip_(gw)}; do "
                          "arping -U -c 3 -I eth0 -s $t $t; arping -A -c 3 -I eth0 -s $t $t; done; "
                          f"arping -c 2 -I eth0 -s {ip_(m2.ip)} {ip_(m1.ip)}; true", timeout=60)
    after = world.guest_arp(m1)
    assert after.get(m2.ip) == m2.d["mac"].lower(), f"m2's IP poisoned in m1's ARP cache: {after}"
    assert after.get(gw) == rmac, f"the router's IP poisoned in m1's ARP cache: {after}"
    # --- Changed IP, then changed MAC: the window runs in the background in the guest (our SSH
    # session to the old address breaks), restores the guest, and leaves its result in a file.
    echos_before = _router_in_echos(rns)
    neg = (f"s=$(date +%s); n=0; hit=0; while [ $(date +%s) -lt $((s+6)) ]; do n=$((n+1)); "
           f"if ping -c 1 -W 1 {gw} >/dev/null 2>&1; then hit=$((hit+1)); fi; "
           f"if ping -c 1 -W 1 {ip_(m1.ip)} >/dev/null 2>&1; then hit=$((hit+1)); fi; done; "
           f"echo \"WINDOW $(( $(date +%s) - s )) ATTEMPTS $n HITS $hit\"")
    mac = o1.d["mac"].lower()
    assert re.match(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$", mac), mac
    m = re.search(r"inet (\S+)/(\d+)", world.sh_ok(o1, "ip -o -4 addr show dev eth0"))
    assert m and m.group(1) == o1.ip, m
    plen = int(m.group(2))
    script = (
        f"exec >/tmp/spoof.out 2>&1; "
        f"ip addr del {o1.ip}/{plen} dev eth0; ip addr add 172.31.0.99/{plen} dev eth0; "
        f"ip route add default via {gw}; echo IP; {neg}; "
        f"ip addr del 172.31.0.99/{plen} dev eth0; ip addr add {o1.ip}/{plen} dev eth0; "
        f"ip route add default via {gw}; "
        f"ip link set eth0 down; ip link set eth0 address 02:00:5e:00:99:99; ip link set eth0 up; "
        f"ip route add default via {gw}; echo MAC; {neg}; "
        f"ip link set eth0 down; ip link set eth0 address {mac}; ip link set eth0 up; "
        f"ip route add default via {gw}; echo DONE")
    # (kumo-tiny's busybox has setsid but no nohup)
    r = world.sh(o1, f"setsid sh -c '{script}' >/dev/null 2>&1 </dev/null &", timeout=30)
    assert r.returncode == 0, r.stderr
    time.sleep(20)
    out = world.sh_until(o1, "cat /tmp/spoof.out", lambda o: "DONE" in o, timeout=90)
    echos_after = _router_in_echos(rns)
    windows = [tuple(map(int, m)) for m in
               re.findall(r"WINDOW (\d+) ATTEMPTS (\d+) HITS (\d+)", out)]
    assert len(windows) == 2, out
    for (win, n, hits), what in zip(windows, ("changed IP", "changed MAC")):
        assert win >= 4 and n >= 2, f"{what}: window too short: {out}"
        assert hits == 0, f"{what}: {hits} pings answered (must be dropped): {out}"
    assert echos_after - echos_before == 0, (
        f"the router received {echos_after - echos_before} echo requests from the spoofing guest")
    assert world.sh_ok(o1, "cat /sys/class/net/eth0/address").strip() == mac
    world.sh_until(o1, ping_cmd(gw))
    _report(f"ARP from o1 claiming {m2.ip} and {gw}: m1 still maps them to {after[m2.ip]} / "
            f"{after[gw]}", f"changed IP: {windows[0]}; changed MAC: {windows[1]} "
            f"(window, attempts, answered); router echo requests received meanwhile: "
            f"{echos_after - echos_before}")


def _router_in_echos(rns_argv: list[str]) -> int:
    out = subprocess.run([*rns_argv, "cat", "/proc/net/snmp"], capture_output=True, text=True,
                         check=True).stdout
    rows = [line.split()[1:] for line in out.splitlines() if line.startswith("Icmp:")]
    return int(dict(zip(rows[0], rows[1]))["InEchos"])


def _flood_control(world, port: int) -> str:
    """A short flood at an allowed port: the datagrams must reach m1 (NoPorts grows), which
    proves the flood path and the counter can see a leak."""
    m1, eip = world.vms["m1"], world.ids["eip_ip"]
    deadline = time.monotonic() + CONVERGE
    while True:
        c0 = world.udp_counters(m1)["NoPorts"]
        res = flood_result(flood(inet_argv(world.lab), eip, port, FLOOD_RATE, 2))
        time.sleep(1)
        got = world.udp_counters(m1)["NoPorts"] - c0
        if got >= res["sent"] // 2:
            return f"control flood to allowed udp/{port}: sent {res['sent']}, delivered {got}"
        assert time.monotonic() < deadline, f"allowed udp/{port}: only {got}/{res['sent']} delivered"


def _ticker(world, vm: Vm, n: int):
    """An established SSH session to the allowed port 22 printing a tick every 0.2 s."""
    return world.stream(vm, f"i=0; while [ $i -lt {int(n)} ]; do echo tick $i; sleep 0.2; "
                            f"i=$((i+1)); done; echo END")


def _ticks(s, n: int) -> str:
    rc = s.finish(timeout=120)
    ticks = [t for t, ln in s.lines if ln.startswith("tick")]
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert rc == 0 and len(ticks) == n and s.lines[-1][1] == "END", (
        f"the established SSH session broke: rc={rc}, {len(ticks)}/{n} ticks, last {s.lines[-3:]}")
    return f"established SSH session: {len(ticks)}/{n} ticks, largest gap {max(gaps):.2f} s"


def test_no_blink_for_a_denied_port_while_rules_go_a_empty_a(world, evidence):
    v, a, g = world.vms, world.users[0], world.ids["G"]
    m1, eip = v["m1"], world.ids["eip_ip"]
    _rules(world, "ingress", [{"protocol": "udp", "from_port": UDP_ALLOWED, "to_port": UDP_ALLOWED,
                               "cidr_ipv4": "0.0.0.0/0"}])
    control = _flood_control(world, UDP_ALLOWED)
    n = 150
    ticker = _ticker(world, m1, n)
    ticker.wait_line(lambda ln: ln.startswith("tick"), 30)
    c0 = world.udp_counters(m1)["NoPorts"]
    f_inet = flood(inet_argv(world.lab), eip, UDP_DENIED, FLOOD_RATE, 22)
    f_rns = flood(world.rns_argv(m1), m1.ip, UDP_DENIED, FLOOD_RATE, 22)
    world.procs += [f_inet, f_rns]
    time.sleep(2)
    timings = []
    for _ in range(3):
        rules = a.call("GET", f"/v1/security-groups/{g}")["ingress_rules"]
        keep = [{k: r[k] for k in ("protocol", "from_port", "to_port", "icmp_type", "icmp_code",
                                   "cidr_ipv4", "peer_group_id") if r.get(k) is not None}
                for r in rules]
        t0 = time.time()
        a.call("POST", f"/v1/security-groups/{g}/ingress/revoke",
               json={"rule_ids": [r["rule_id"] for r in rules]})
        took_revoke = time.time() - t0
        assert a.call("GET", f"/v1/security-groups/{g}")["ingress_rules"] == []
        time.sleep(1.5)
        t1 = time.time()
        a.call("POST", f"/v1/security-groups/{g}/ingress", json={"rules": keep})
        timings.append(f"revoke all {len(rules)} ingress rules (API call {took_revoke:.3f} s), "
                       f"1.5 s with none, re-authorize them (API call {time.time() - t1:.3f} s)")
        time.sleep(2)
    r_inet, r_rns = flood_result(f_inet), flood_result(f_rns)
    ticks = _ticks(ticker, n)
    leaked = world.udp_counters(m1)["NoPorts"] - c0
    after = _flood_control(world, UDP_ALLOWED)
    _report(control, *timings, f"flood to denied udp/{UDP_DENIED}: internet: {r_inet}; router: "
                               f"{r_rns}; delivered to m1: {leaked}", ticks,
            "after A -> {} -> A x3: " + after)
    assert leaked == 0, f"{leaked} datagrams to the denied port reached m1 while rules changed"


def test_no_blink_for_a_denied_port_while_the_agent_restarts(world, evidence):
    v, lab = world.vms, world.lab
    m1, eip = v["m1"], world.ids["eip_ip"]
    control = _flood_control(world, UDP_ALLOWED)
    n = 150
    ticker = _ticker(world, m1, n)
    ticker.wait_line(lambda ln: ln.startswith("tick"), 30)
    c0 = world.udp_counters(m1)["NoPorts"]
    f_inet = flood(inet_argv(lab), eip, UDP_DENIED, FLOOD_RATE, 25)
    f_rns = flood(world.rns_argv(m1), m1.ip, UDP_DENIED, FLOOD_RATE, 25)
    world.procs += [f_inet, f_rns]
    time.sleep(3)
    timing = restart_agent(lab, m1.host)
    r_inet, r_rns = flood_result(f_inet), flood_result(f_rns)
    ticks = _ticks(ticker, n)
    leaked = world.udp_counters(m1)["NoPorts"] - c0
    after = _flood_control(world, UDP_ALLOWED)
    obs = timing["observed"]
    _report(control, f"agent {m1.host} SIGKILL; restarted after {timing['up']:.1f} s; its first pass "
                     f"at {timing['pass']} s; network applied at {timing['applied']} s; observed "
                     f"{obs}",
            f"flood to denied udp/{UDP_DENIED}: internet -> {eip}: {r_inet}; router -> {m1.ip}: "
            f"{r_rns}; delivered to m1: {leaked}", ticks, "after the restart: " + after)
    assert leaked == 0, f"{leaked} datagrams to the denied port reached m1 during the restart"
    assert timing["applied"] is not None, f"the restarted agent never applied its network: {obs}"
