"""agent/netns.py: namespace identity, entry and the refusal to program the machine's own namespace.

Namespaces are faked with a private run dir: a symlink to /proc/self/ns/net is "a namespace this
process is in" (same nsfs device and inode), an empty file is a leftover of a dead one.
"""
from __future__ import annotations

import os

import pytest

from agent import netns


@pytest.fixture
def run_dir(tmp_path):
    os.symlink("/proc/self/ns/net", tmp_path / "me")
    (tmp_path / "stale").write_text("")
    return str(tmp_path)


def test_names_are_validated():
    assert netns.valid_netns_name("kumo-h1-kvr-00002a") == "kumo-h1-kvr-00002a"
    for bad in ["", ".", "..", "-x", "a/b", "a b", "x" * 65, None, 3]:
        with pytest.raises(ValueError):
            netns.valid_netns_name(bad)
    with pytest.raises(ValueError):
        netns.netns_path("../etc")


def test_identity(run_dir):
    assert netns.own_netns_name(run_dir) == "me"
    assert netns.in_private_netns(run_dir)
    assert netns.is_current(None) and netns.is_current("me", run_dir)
    assert not netns.is_current("stale", run_dir) and not netns.is_current("gone", run_dir)
    assert not netns.is_current("-bad", run_dir)
    assert netns.pid_in(os.getpid(), "me", run_dir) and not netns.pid_in(os.getpid(), "stale", run_dir)
    assert netns.own_netns_name(os.path.join(run_dir, "missing")) is None


def test_live_inode_and_stale_entries(run_dir):
    assert netns.is_live("me", run_dir) and not netns.is_live("stale", run_dir)
    assert netns.inode("me", run_dir) == os.stat("/proc/self/ns/net").st_ino
    assert netns.inode(None) is None and netns.inode("gone", run_dir) is None
    assert netns.inode("a b", run_dir) is None
    netns.drop_stale("me", run_dir)  # a live namespace is never removed
    netns.drop_stale("stale", run_dir)
    netns.drop_stale("gone", run_dir)  # already gone: fine
    netns.drop_stale("../x", run_dir)  # not a netns name: left alone, no error
    assert sorted(os.listdir(run_dir)) == ["me"]


def test_exec_argv():
    assert netns.exec_argv(None, ["nft", "-f", "-"]) == ["nft", "-f", "-"]
    assert netns.exec_argv("kumo-h1", ["sysctl", "-q"]) == [
        "nsenter", "--net=/run/netns/kumo-h1", "--", "sysctl", "-q"]
    with pytest.raises(ValueError):
        netns.exec_argv("--net=/proc/1/ns/net", ["true"])


def test_the_machines_own_namespace_is_refused(monkeypatch):
    monkeypatch.setattr(netns, "in_private_netns", lambda *a: False)
    with pytest.raises(netns.NamespaceRefused) as e:
        netns.require_private(False, "add a bridge")
    assert e.value.code == "RootNamespaceRefused" and not e.value.retryable
    assert "add a bridge" in str(e.value) and "KUMO_AGENT_ALLOW_ROOT_NETNS" in str(e.value)
    netns.require_private(True, "add a bridge")  # allowed: a real host
    monkeypatch.setattr(netns, "in_private_netns", lambda *a: True)
    netns.require_private(False, "add a bridge")


def test_resolve_namespace_asks_netns(monkeypatch):
    """The dataplane's namespace choice goes through the one check (agent/network/host.py)."""
    from agent.network import host
    from agent.network.apply import DataplaneError
    monkeypatch.setattr(host, "own_netns_name", lambda: None)
    monkeypatch.setattr(netns, "in_private_netns", lambda *a: False)
    with pytest.raises(DataplaneError) as e:
        host.resolve_namespace(None, "h1", False)
    assert e.value.code == "RootNamespaceRefused"
    assert host.resolve_namespace(None, "h1", True) == host.HostNamespace(None, "h1")
    monkeypatch.setattr(netns, "in_private_netns", lambda *a: True)
    assert host.resolve_namespace(None, "h1", False) == host.HostNamespace(None, "h1")
    monkeypatch.setattr(host, "own_netns_name", lambda: "kumo-h1")
    assert host.resolve_namespace(None, "h1", False) == host.HostNamespace("kumo-h1", "kumo-h1")
