"""Unit tests for controller.scheduler: filters, weighers, multi-instance accounting, errors."""
from __future__ import annotations

import dataclasses

import pytest

from controller.scheduler import HostState, NoValidHost, Request, schedule
from controller.scheduler.filters import (ArchitectureFilter, ComputeFilter, CoreFilter,
                                          DiskFilter, RamFilter)

GIB = 1024 ** 3


def host(hid: str, **kw) -> HostState:
    base = dict(host_id=hid, up=True, enabled=True, architecture="x86_64", vcpus=4,
                memory_mib=8192, disk_bytes=100 * GIB, vcpus_used=0, memory_mib_used=0,
                disk_bytes_used=0)
    base.update(kw)
    return HostState(**base)


SMALL = Request(vcpus=1, memory_mib=1024, disk_bytes=10 * GIB)


def test_host_state_is_frozen():
    h = host("a")
    with pytest.raises(dataclasses.FrozenInstanceError):
        h.vcpus = 8  # type: ignore[misc]


@pytest.mark.parametrize("kw", [dict(vcpus=0, memory_mib=1, disk_bytes=0),
                                dict(vcpus=1, memory_mib=0, disk_bytes=0),
                                dict(vcpus=1, memory_mib=1, disk_bytes=-1)])
def test_request_rejects_non_positive(kw):
    with pytest.raises(ValueError):
        Request(**kw)


def test_filters_individually():
    assert not ComputeFilter().host_passes(host("a", up=False), SMALL)
    assert not ComputeFilter().host_passes(host("a", enabled=False), SMALL)
    assert ComputeFilter().host_passes(host("a"), SMALL)
    assert not ArchitectureFilter().host_passes(host("a", architecture="aarch64"), SMALL)
    # 4 vcpus * 4.0 = 16 schedulable; 15 used + 1 fits, 16 used + 1 does not.
    assert CoreFilter(4.0).host_passes(host("a", vcpus_used=15), SMALL)
    assert not CoreFilter(4.0).host_passes(host("a", vcpus_used=16), SMALL)
    assert not CoreFilter(1.0).host_passes(host("a", vcpus_used=4), SMALL)
    assert RamFilter(1.0).host_passes(host("a", memory_mib_used=7168), SMALL)
    assert not RamFilter(1.0).host_passes(host("a", memory_mib_used=7169), SMALL)
    assert RamFilter(1.5).host_passes(host("a", memory_mib_used=8192), SMALL)
    assert DiskFilter(1.0).host_passes(host("a", disk_bytes_used=90 * GIB), SMALL)
    assert not DiskFilter(1.0).host_passes(host("a", disk_bytes_used=90 * GIB + 1), SMALL)


def test_filter_all_matches_host_passes():
    hosts = [host("a", up=False), host("b", architecture="arm"), host("c", vcpus_used=16),
             host("d", memory_mib_used=8000), host("e", disk_bytes_used=95 * GIB), host("f")]
    for f in [ComputeFilter(), ArchitectureFilter(), CoreFilter(4.0), RamFilter(1.0),
              DiskFilter(1.0)]:
        assert f.filter_all(hosts, SMALL) == [h for h in hosts if f.host_passes(h, SMALL)]


def test_down_disabled_and_wrong_arch_hosts_never_chosen():
    hosts = [host("a", up=False), host("b", enabled=False), host("c", architecture="aarch64"),
             host("d", memory_mib=2048)]
    assert schedule(hosts, SMALL, 2) == ["d", "d"]


def test_architecture_request_selects_matching_host():
    hosts = [host("a"), host("b", architecture="aarch64")]
    assert schedule(hosts, Request(1, 1024, 0, architecture="aarch64"), 1) == ["b"]


def test_spread_prefers_most_free_and_pack_least_free():
    hosts = [host("a", memory_mib_used=6144, vcpus_used=3), host("b"),
             host("c", memory_mib_used=2048, vcpus_used=1)]
    assert schedule(hosts, SMALL, 1, weigher="spread") == ["b"]
    assert schedule(hosts, SMALL, 1, weigher="pack") == ["a"]


def test_spread_alternates_and_pack_fills_one_host_first():
    hosts = [host("a"), host("b")]
    assert schedule(hosts, SMALL, 4) == ["a", "b", "a", "b"]
    # Pack: 8 GiB RAM / 1 GiB per instance -> 8 on "a" before any on "b".
    assert schedule(hosts, SMALL, 9, weigher="pack") == ["a"] * 8 + ["b"]


def test_ties_broken_by_host_id_regardless_of_input_order():
    hosts = [host("h3"), host("h1"), host("h2")]
    assert schedule(hosts, SMALL, 1) == ["h1"]
    assert schedule(list(reversed(hosts)), SMALL, 1) == ["h1"]
    assert schedule(hosts, SMALL, 1, weigher="pack") == ["h1"]


def test_weights_are_normalised_so_both_resources_count():
    # Raw sums would pick "a" (8192 MiB + 1 vCPU free > 7168 + 16). Normalised per resource,
    # "a" scores 1 + 0, "b" 0.86 + 1, "c" 0 + 0.47: "b" wins under spread.
    hosts = [host("a", memory_mib_used=0, vcpus_used=15),
             host("b", memory_mib_used=1024, vcpus_used=0),
             host("c", memory_mib_used=7168, vcpus_used=8)]
    assert schedule(hosts, SMALL, 1) == ["b"]


def test_multi_instance_accounts_each_placement():
    hosts = [host("a", vcpus=1, memory_mib=2048)]
    # cpu ratio 1.0 -> only one 1-vCPU instance fits even though RAM has room for two.
    assert schedule(hosts, SMALL, 1, cpu_overcommit=1.0) == ["a"]
    with pytest.raises(NoValidHost) as ei:
        schedule(hosts, SMALL, 2, cpu_overcommit=1.0)
    assert ei.value.placed == 1 and ei.value.requested == 2
    assert schedule(hosts, SMALL, 2, cpu_overcommit=2.0) == ["a", "a"]


def test_input_hosts_are_not_modified():
    hosts = [host("a"), host("b")]
    before = list(hosts)
    schedule(hosts, SMALL, 5)
    assert hosts == before


def test_no_valid_host_reports_which_filter_eliminated_how_many():
    hosts = [host("a", up=False), host("b", enabled=False), host("c", architecture="arm"),
             host("d", vcpus_used=16), host("e", memory_mib_used=8000),
             host("f", disk_bytes_used=100 * GIB)]
    with pytest.raises(NoValidHost) as ei:
        schedule(hosts, SMALL, 1)
    e = ei.value
    assert e.eliminated == [("ComputeFilter", 2), ("ArchitectureFilter", 1), ("CoreFilter", 1),
                            ("RamFilter", 1), ("DiskFilter", 1)]
    assert e.placed == 0 and e.total_hosts == 6
    assert "ComputeFilter eliminated 2" in str(e) and "DiskFilter eliminated 1" in str(e)
    assert e.code == "InsufficientInstanceCapacity"


def test_no_hosts_at_all():
    with pytest.raises(NoValidHost) as ei:
        schedule([], SMALL, 1)
    assert ei.value.total_hosts == 0


@pytest.mark.parametrize("kw", [dict(count=0), dict(count=1, weigher="random"),
                                dict(count=1, cpu_overcommit=0), dict(count=1, ram_overcommit=-1)])
def test_bad_arguments_raise_value_error(kw):
    with pytest.raises(ValueError):
        schedule([host("a")], SMALL, **kw)


def test_schedule_between_places_as_many_as_fit():
    from controller.scheduler import schedule_between

    hosts = [host("a", vcpus=1), host("b", vcpus=1)]  # 4 slots each at cpu ratio 4
    assert schedule_between(hosts, SMALL, 1, 100) == ["a", "b"] * 4
    assert schedule_between(hosts, SMALL, 8, 8) == schedule(hosts, SMALL, 8)
    assert schedule_between(hosts, SMALL, 1, 3) == schedule(hosts, SMALL, 3)
    with pytest.raises(NoValidHost) as ei:
        schedule_between(hosts, SMALL, 9, 100)
    assert ei.value.placed == 8 and ei.value.requested == 9
    with pytest.raises(ValueError):
        schedule_between(hosts, SMALL, 3, 2)
