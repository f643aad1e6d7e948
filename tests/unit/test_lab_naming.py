"""Lab naming and addressing rules (pure)."""

import pytest

from lab import naming as nm
from lab.errors import LabError


@pytest.mark.parametrize("prefix", ["kumo", "kt1a2b3c", "a"])
def test_valid_prefixes_give_short_names(prefix):
    names = [nm.fabric_netns(prefix), nm.inet_netns(prefix), nm.host_netns(prefix, "h99")]
    assert all(len(n) <= 15 for n in names)
    assert names[0] == f"{prefix}-fab" and names[1] == f"{prefix}-inet" and names[2] == f"{prefix}-h99"


@pytest.mark.parametrize("prefix", ["", "Kumo", "1abc", "toolongprefix", "a-b", "a b", "a/b", None])
def test_bad_prefixes_are_refused_with_a_code(prefix):
    with pytest.raises(LabError) as e:
        nm.validate_prefix(prefix)
    assert e.value.code == "InvalidLabPrefix"


def test_host_ids_and_addresses():
    assert nm.host_ids(3) == ["h1", "h2", "h3"]
    assert str(nm.host_address("h1")) == "100.64.0.11/24"
    assert str(nm.host_address("h42")) == "100.64.0.52/24"
    assert str(nm.inet_address()) == "100.64.0.1/24"
    assert nm.host_number("h7") == 7
    assert nm.fabric_port("h12") == "p-h12"


@pytest.mark.parametrize("count", [0, -1, 100, True, "2"])
def test_bad_host_counts(count):
    with pytest.raises(LabError) as e:
        nm.host_ids(count)
    assert e.value.code == "InvalidHostCount"


@pytest.mark.parametrize("hid", ["h0", "h100", "x1", "h01", "", "h1 "])
def test_bad_host_ids(hid):
    with pytest.raises(LabError):
        nm.host_number(hid)


def test_cleanup_pattern_matches_only_this_prefix():
    pat = nm.all_netns_pattern("kt1")
    assert all(pat.match(n) for n in ["kt1-fab", "kt1-inet", "kt1-ctl", "kt1-h1", "kt1-h99",
                                      "kt1-h2-kvr-00000a"])
    assert not pat.match("kt1-h2-kvr-zz")
    assert not any(pat.match(n) for n in ["kt12-h1", "kt1-h0", "kt1-h100", "xkt1-fab", "kt1-fabric", "kumo-h1"])


def test_uplink_macs_are_fixed_unique_and_locally_administered():
    macs = {nm.uplink_mac(h) for h in nm.host_ids(99)} | {nm.INET_MAC, nm.STORAGE_MAC, nm.CTL_MAC}
    assert len(macs) == 102
    assert all(int(m.split(":")[0], 16) & 0b10 and not int(m.split(":")[0], 16) & 1 for m in macs)


def test_storage_node_names_and_address():
    assert nm.storage_netns("kt1") == "kt1-sn" and len(nm.storage_netns("kt1a2b3c")) <= 15
    assert nm.all_netns_pattern("kt1").match("kt1-sn")
    assert not nm.all_netns_pattern("kt1").match("kt12-sn")
    # On the underlay, but never an address of the internet namespace or of any host.
    assert nm.STORAGE_ADDR.network == nm.FABRIC_NET
    taken = {nm.host_address(h).ip for h in nm.host_ids(nm.MAX_HOSTS)} | {nm.INET_FABRIC_ADDR}
    assert nm.STORAGE_ADDR.ip not in taken
    assert nm.STORAGE_MAC not in {nm.uplink_mac(h) for h in nm.host_ids(99)} | {nm.INET_MAC}
    assert len(nm.STORAGE_FABRIC_PORT) <= 15


def test_controller_namespace_and_fabric_listeners():
    assert nm.ctl_netns("kt1") == "kt1-ctl" and len(nm.ctl_netns("kt1a2b3c")) <= 15
    assert nm.controller_agent_listen() == "100.64.0.2:8789"
    assert nm.agent_listen("h1") == "100.64.0.11:8788" and nm.agent_listen("h99") == "100.64.0.109:8788"
    # The controller's address is no one else's: not the internet's, a host's or the storage node's.
    others = {nm.INET_FABRIC_ADDR, nm.STORAGE_ADDR.ip} | {nm.host_address(h).ip for h in nm.host_ids(99)}
    assert nm.CTL_ADDR.ip not in others and nm.CTL_ADDR.network == nm.FABRIC_NET
