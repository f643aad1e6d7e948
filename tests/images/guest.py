"""Boot helpers for image tests: NoCloud seed ISOs, qcow2 overlays, TCG qemu runs (never user-mode
networking: either no NIC or a tap inside a network namespace the test created), console waits."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml


def make_seed(d: Path, meta: dict | str | None, user: str | None = None,
              net: dict | str | None = None) -> Path:
    """A NoCloud seed ISO (volume label cidata). Dicts are written with yaml.safe_dump like the agent."""
    src = d / f"seed-{uuid.uuid4().hex[:6]}"
    src.mkdir()
    files = []
    for name, content in (("meta-data", meta), ("user-data", user), ("network-config", net)):
        if content is None:
            continue
        text = content if isinstance(content, str) else yaml.safe_dump(content)
        (src / name).write_text(text)
        files.append(name)
    iso = d / f"{src.name}.iso"
    subprocess.run(["genisoimage", "-quiet", "-o", str(iso), "-V", "cidata", "-J", "-r", *files],
                   cwd=src, check=True)
    return iso


def overlay(base: Path, d: Path, size: str | None = None) -> Path:
    ov = d / f"ov-{uuid.uuid4().hex[:6]}.qcow2"
    cmd = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(ov)]
    subprocess.run(cmd + ([size] if size else []), check=True)
    return ov


@dataclass
class Guest:
    proc: subprocess.Popen
    console: Path
    started: float
    monitor_path: Path | None = None

    def monitor(self, command: str) -> None:
        """Send one human-monitor command (e.g. system_powerdown = ACPI power button)."""
        import socket

        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.monitor_path))
            s.sendall(command.encode() + b"\n")
            time.sleep(0.2)

    def text(self) -> str:
        try:
            return self.console.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while time.monotonic() < deadline:
            m = rx.search(self.text())
            if m:
                return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} not on the console within {timeout}s:\n{self.text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def boot(disk: Path, seed: Path | None, d: Path, *, mem: int = 128, netns: str | None = None,
         tap: str | None = None, mac: str = "52:54:00:12:34:56"):
    console = d / f"console-{uuid.uuid4().hex[:6]}.log"
    mon = d / f"mon-{uuid.uuid4().hex[:6]}.sock"
    cmd = ["qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-m", str(mem), "-smp", "1",
           "-nographic", "-monitor", f"unix:{mon},server,nowait", "-serial", f"file:{console}",
           "-drive", f"file={disk},if=virtio"]
    if seed:
        cmd += ["-drive", f"file={seed},media=cdrom,if=ide,readonly=on"]
    if tap:
        cmd += ["-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
                "-device", f"virtio-net-pci,netdev=n0,mac={mac}"]
    else:
        cmd += ["-nic", "none"]
    if netns:
        cmd = ["ip", "netns", "exec", netns] + cmd
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    g = Guest(proc, console, time.monotonic(), mon)
    try:
        yield g
    finally:
        g.stop()


@contextmanager
def netns_with_tap(prefix: str = "kimg"):
    """A private network namespace with bridge br0 (10.99.0.1/24) and tap0 bridged to it."""
    ns = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
    sh = lambda *a: subprocess.run(["ip", "netns", "exec", ns, *a], check=True, capture_output=True)  # noqa: E731
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        sh("ip", "link", "set", "lo", "up")
        sh("ip", "link", "add", "br0", "type", "bridge")
        sh("ip", "tuntap", "add", "dev", "tap0", "mode", "tap")
        sh("ip", "link", "set", "tap0", "master", "br0")
        sh("ip", "addr", "add", "10.99.0.1/24", "dev", "br0")
        sh("ip", "link", "set", "tap0", "up")
        sh("ip", "link", "set", "br0", "up")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)


def in_ns(ns: str, *argv: str, timeout: float = 30, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                          timeout=timeout, check=check)
