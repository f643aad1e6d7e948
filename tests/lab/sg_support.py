"""Helpers for the security-group lab test (tests/lab/test_security_groups_lab.py): reaching
guests over SSH from their VPC router namespace (on tests/lab/net_support's LabWorld), probe
windows inside the internet namespace (every attempt must fail for the whole window), guest
output streams timestamped on the test host (API call -> effective timings), a UDP flooder, the
guests' UDP counters, restarting a host's agent, and dumping the host's nftables ruleset as
evidence.

Everything sent stays inside the lab's namespaces; every process started here is stopped by PID.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lab.naming import host_netns, inet_netns
from lab.testing import end_process, until
from tests.lab.net_support import (WINDOW, LabWorld, Vm, agent_network, in_router_ns,
                                   ip_, lab_state)
from tests.lab.guests import SSH_OPTS


def banner_cmd(ip: str, port: int = 22, secs: int = 3) -> str:
    """Succeeds when a TCP connection gets the SSH server's banner (a positive path check)."""
    return f"timeout {int(secs)} nc {ip_(ip)} {int(port)} </dev/null | grep -q SSH-2.0"


class Stream:
    """A command's stdout, each line stamped with the test host's clock as it arrives (a guest
    loop over SSH, or a process in a lab namespace). Bounded by the command itself; stop() ends
    the local process by its PID."""

    def __init__(self, argv: list[str]):
        self.lines: list[tuple[float, str]] = []
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True)
        self._cv = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._cv:
                self.lines.append((time.time(), line.rstrip("\n")))
                self._cv.notify_all()

    def wait_line(self, pred, timeout: float, since: float = 0.0) -> tuple[float, str]:
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                for t, line in self.lines:
                    if t >= since and pred(line):
                        return t, line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no matching line within {timeout} s; last lines: "
                                         f"{self.lines[-5:]}; stderr: {self._stderr()}")
                self._cv.wait(min(left, 0.2))

    def _stderr(self) -> str:
        if self.proc.poll() is None:
            return "(running)"
        return (self.proc.stderr.read() or "")[-500:]

    def finish(self, timeout: float = 120) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return rc

    def stop(self) -> None:
        end_process(self.proc, grace=5)
        self._reader.join(timeout=5)


@dataclass
class World(LabWorld):
    procs: list = field(default_factory=list)   # Streams / listeners to stop at teardown

    def rns_argv(self, vm: Vm) -> list[str]:
        return in_router_ns(self.lab, vm.host, self.router_ns(vm.host, vm.d["vpc_id"]))

    def ssh_argv(self, vm: Vm, command: str) -> list[str]:
        return [*self.rns_argv(vm), "ssh", "-i", str(vm.key), *SSH_OPTS,
                "-o", "ServerAliveInterval=2", "-o", "ServerAliveCountMax=10",
                f"root@{ip_(vm.ip)}", command]

    def sh(self, vm: Vm, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(self.ssh_argv(vm, command), capture_output=True, text=True,
                              timeout=timeout)

    def sh_ok(self, vm: Vm, command: str, timeout: float = 60) -> str:
        r = self.sh(vm, command, timeout=timeout)
        assert r.returncode == 0, f"{vm.name}: {command!r}: rc={r.returncode} {r.stdout!r} {r.stderr!r}"
        return r.stdout

    def stream(self, vm: Vm, command: str) -> Stream:
        s = Stream(self.ssh_argv(vm, command))
        self.procs.append(s)
        return s

    def udp_counters(self, vm: Vm) -> dict[str, int]:
        """The guest kernel's Udp counters (/proc/net/snmp): NoPorts counts unicast datagrams
        delivered to a port without a socket, i.e. every flood datagram that got in."""
        out = self.sh_ok(vm, "cat /proc/net/snmp")
        rows = [line.split()[1:] for line in out.splitlines() if line.startswith("Udp:")]
        return dict(zip(rows[0], map(int, rows[1])))

    def guest_arp(self, vm: Vm) -> dict[str, str]:
        out = self.sh_ok(vm, "cat /proc/net/arp")
        table = {}
        for line in out.splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 4 and parts[3] != "00:00:00:00:00:00":
                table[parts[0]] = parts[3].lower()
        return table


# --- the internet namespace ----------------------------------------------------------------------
# argv: target port duration interval stop connect-timeout ("match:<text>", "fail" or "none")
HTTP_PROBE = r"""
import json, socket, sys, time
target, port, duration, interval, stop = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
connect_timeout = float(sys.argv[6])
end = time.time() + duration
while True:
    t = time.time(); body = err = None
    try:
        c = socket.create_connection((target, port), timeout=connect_timeout)
        c.settimeout(3); c.sendall(b"GET / HTTP/1.0\r\n\r\n"); data = b""
        while True:
            chunk = c.recv(4096)
            if not chunk:
                break
            data += chunk
        c.close()
        body = data.split(b"\r\n\r\n", 1)[-1].decode(errors="replace").strip()
    except OSError as e:
        err = str(e) or type(e).__name__
    print(json.dumps({"t": t, "body": body, "err": err}), flush=True)
    if stop.startswith("match:") and body is not None and stop[6:] in body:
        break
    if stop == "fail" and body is None:
        break
    if time.time() >= end:
        break
    time.sleep(max(0.0, interval - (time.time() - t)))
"""

# argv: target port rate duration -> one JSON line {"sent", "errors", "secs"}; one source port
# (one flow: a single packet let through would confirm a conntrack entry and let the rest in).
UDP_FLOOD = r"""
import json, socket, sys, time
target, port, rate, duration = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent = errors = 0; start = time.time(); nxt = start
while time.time() - start < duration:
    try:
        s.sendto(b"kumo-flood %d" % sent, (target, port)); sent += 1
    except OSError:
        errors += 1
    nxt += 1.0 / rate
    time.sleep(max(0.0, nxt - time.time()))
print(json.dumps({"sent": sent, "errors": errors, "secs": round(time.time() - start, 2)}), flush=True)
"""

def inet_argv(lab, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", inet_netns(lab.prefix), *argv]


def inet_probe(lab, target: str, *, port: int = 80, duration: float = 30.0, interval: float = 0.2,
               stop: str = "none", connect_timeout: float = 1.0) -> list[dict]:
    argv = inet_argv(lab, sys.executable, "-c", HTTP_PROBE, ip_(target), str(int(port)),
                     str(duration), str(interval), stop, str(connect_timeout))
    r = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def inet_probe_stream(lab, target: str, *, port: int = 80, duration: float = 30.0,
                      interval: float = 0.05, stop: str = "none") -> Stream:
    return Stream(inet_argv(lab, sys.executable, "-c", HTTP_PROBE, ip_(target), str(int(port)),
                            str(duration), str(interval), stop, "0.5"))


def assert_inet_blocked(lab, target: str, port: int = 80, secs: float = WINDOW) -> str:
    res = inet_probe(lab, target, port=port, duration=secs, interval=0.3)
    span = res[-1]["t"] - res[0]["t"]
    assert len(res) >= 3 and span >= 3.0, f"window too short: {len(res)} attempts in {span:.1f} s"
    answered = [r for r in res if r["body"] is not None]
    assert not answered, f"{target}:{port} answered from the internet (must be blocked): {answered}"
    return f"internet -> {target}:{port}: {len(res)} attempts in {span:.1f} s, all failed"


def flood(argv_prefix: list[str], target: str, port: int, rate: float, secs: float) -> Stream:
    return Stream([*argv_prefix, sys.executable, "-c", UDP_FLOOD, ip_(target), str(int(port)),
                   str(rate), str(secs)])


def flood_result(s: Stream, timeout: float = 120) -> dict:
    rc = s.finish(timeout)
    assert rc == 0, f"flooder failed: {s._stderr()}"
    return json.loads(s.lines[-1][1])


# --- hosts and agents ----------------------------------------------------------------------------


def stop_agent(lab, host_id: str, sig: int = signal.SIGKILL) -> int:
    pid = lab_state(lab).processes[f"agent-{host_id}"].pid
    os.kill(pid, sig)

    def exited() -> bool:
        if not Path(f"/proc/{pid}").exists():
            return True
        try:
            os.waitpid(pid, os.WNOHANG)  # reaps it when it is our child
        except ChildProcessError:
            pass
        return False
    until(exited, 30, f"agent {pid} exits on signal {sig}", every=0.05)
    return pid


def restart_agent(lab, host_id: str, sig: int = signal.SIGKILL) -> dict:
    """Kill the host's agent, start it again (lab.up touches nothing else), wait until it has
    applied its saved network document; timings relative to the kill."""
    t0 = time.time()
    pid = stop_agent(lab, host_id, sig)
    time.sleep(1)
    lab.up(hosts=2)
    t_up = time.time()
    deadline = time.monotonic() + 60
    obs, t_pass = None, None
    while time.monotonic() < deadline:
        try:
            obs = agent_network(lab, host_id)
        except Exception:  # noqa: BLE001 - the agent may still be starting
            obs = None
        if obs and (obs.get("applied_at") or 0) >= t0 and t_pass is None:
            t_pass = time.time()  # the new agent has run a pass (the firewall comes first)
        if obs and obs["generation"] and obs["applied_generation"] == obs["generation"]:
            break
        time.sleep(0.2)
    return {"old_pid": pid, "up": t_up - t0, "pass": (t_pass - t0) if t_pass else None,
            "applied": (time.time() - t0) if obs and obs["generation"]
            and obs["applied_generation"] == obs["generation"] else None, "observed": obs}


def dump_ruleset(lab, host_id: str, path: Path) -> Path:
    """Evidence: the host namespace's nftables ruleset (JSON) and its links, written to `path`."""
    hns = host_netns(lab.prefix, host_id)
    nft = subprocess.run(["ip", "netns", "exec", hns, "nft", "-j", "list", "ruleset"],
                         capture_output=True, text=True)
    links = subprocess.run(["ip", "-n", hns, "-br", "link"], capture_output=True, text=True)
    path.write_text(json.dumps({"nft": nft.stdout, "nft_err": nft.stderr,
                                "links": links.stdout}, indent=1))
    return path


# --- test-side shim for a lab bug (reported; lab/network.py is not this test's file) --------------
