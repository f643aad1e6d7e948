"""kumo-tiny's in-guest NoCloud seed parsing (YAML subset -> key/values, network plan, SSH keys),
run on the host with the same busybox the guest uses."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

LIB = Path(__file__).resolve().parents[2] / "images/files/tiny/rootfs/lib/kumo"
BUSYBOX = shutil.which("busybox")
pytestmark = pytest.mark.skipif(BUSYBOX is None, reason="busybox not installed")


def flatten(text: str, tmp_path: Path) -> tuple[int, dict[str, str], str]:
    src = tmp_path / "in.yaml"
    src.write_text(text)
    p = subprocess.run([BUSYBOX, "awk", "-f", str(LIB / "yaml2kv.awk"), str(src)], capture_output=True, text=True)
    kv = dict(line.split("\t", 1) for line in p.stdout.splitlines() if "\t" in line)
    return p.returncode, kv, p.stderr


def sh(script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([BUSYBOX, "sh", "-c", f"KUMO_LIB={LIB}; . {LIB}/seed.sh; {script}"], cwd=tmp_path,
                          capture_output=True, text=True)


NET = {"version": 2, "ethernets": {"eth0": {
    "match": {"macaddress": "52:54:00:12:34:56"}, "set-name": "eth0", "addresses": ["10.0.0.5/24"],
    "gateway4": "10.0.0.1", "nameservers": {"addresses": ["10.0.0.2", "10.0.0.3"], "search": ["lab"]},
    "routes": [{"to": "192.168.0.0/16", "via": "10.0.0.254", "metric": 100}]}}}


@pytest.mark.parametrize("dump", [
    lambda d: yaml.safe_dump(d),
    lambda d: yaml.safe_dump(d, default_flow_style=True),
    lambda d: yaml.safe_dump(d, default_flow_style=None),
    lambda d: __import__("json").dumps(d),
    lambda d: yaml.safe_dump({"network": d}),
], ids=["block", "flow", "mixed", "json", "wrapped"])
def test_network_config_styles_give_the_same_plan(dump, tmp_path):
    rc, kv, err = flatten(dump(NET), tmp_path)
    assert rc == 0, err
    prefix = "network." if "network.version" in kv else ""
    assert kv[f"{prefix}ethernets.eth0.match.macaddress"] == "52:54:00:12:34:56"
    assert kv[f"{prefix}ethernets.eth0.addresses.0"] == "10.0.0.5/24"
    (tmp_path / "net.kv").write_text("".join(f"{k}\t{v}\n" for k, v in kv.items()))
    p = sh("net_plan net.kv", tmp_path)
    assert p.returncode == 0, p.stdout
    assert p.stdout.splitlines() == [
        "iface eth0 52:54:00:12:34:56 - eth0", "addr eth0 10.0.0.5/24", "route eth0 default 10.0.0.1",
        "route eth0 192.168.0.0/16 10.0.0.254 100", "dns 10.0.0.2", "dns 10.0.0.3", "search lab"]


def test_meta_data_and_folded_long_keys(tmp_path):
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHx3b2xvbmdrZXlkYXRhbG9uZ2tleWRhdGFsb25na2V5 someone@a-very-long-host.example"
    meta = yaml.safe_dump({"instance-id": "i-0123456789abcdef0", "local-hostname": "web-1", "public-keys": [key]})
    user = "#cloud-config\n" + yaml.safe_dump({"ssh_authorized_keys": [key, "ssh-rsa AAAAB3Nza other"],
                                               "users": [{"name": "x", "ssh_authorized_keys": ["ssh-rsa AAAAB3Nza other"]}]})
    assert "\n  " in yaml.safe_dump([key])  # PyYAML folds a long key: the parser must join it back
    rc, kv, err = flatten(meta, tmp_path)
    assert rc == 0, err
    assert kv["instance-id"] == "i-0123456789abcdef0" and kv["local-hostname"] == "web-1"
    assert kv["public-keys.0"] == key
    (tmp_path / "m.kv").write_text("".join(f"{k}\t{v}\n" for k, v in kv.items()))
    rc, kv, err = flatten(user, tmp_path)
    assert rc == 0, err
    (tmp_path / "u.kv").write_text("".join(f"{k}\t{v}\n" for k, v in kv.items()))
    assert sh("ssh_keys m.kv u.kv", tmp_path).stdout.splitlines() == [key, "ssh-rsa AAAAB3Nza other"]


def test_scalars_quotes_comments_and_block_scalars(tmp_path):
    text = ("# comment\n---\na: 'it''s: quoted'  \nb: \"x\\\"y\"\nc: plain # trailing comment\nd:\ne: ~\n"
            "f: |\n  line one\n  line two\ng: [1, 'two, three', {h: i}]\n")
    rc, kv, err = flatten(text, tmp_path)
    assert rc == 0, err
    assert kv == {"a": "it's: quoted", "b": 'x"y', "c": "plain", "d": "", "e": "", "f": "line one line two",
                  "g.0": "1", "g.1": "two, three", "g.2.h": "i"}


@pytest.mark.parametrize("text,reason", [
    ("just a string\n", "expected 'key: value'"),
    ("a: [1, 2\n", "unterminated"),
    ("a: 'open\n", "unterminated"),
    ("a:\n  b: 1\n c: 2\n", "bad indentation"),
    ("a:\n\tb: 1\n", "tab"),
    ("{a: 1\n", "unterminated"),
    ("- 1\n- 2\n", "expected a mapping"),
    ("[1, 2]\n", "expected a mapping"),
    ("a: 1\n---\nb: 2\n", "one YAML document"),
])
def test_malformed_yaml_fails_with_a_reason(text, reason, tmp_path):
    rc, _, err = flatten(text, tmp_path)
    assert rc == 1 and reason in err, err


@pytest.mark.parametrize("net,reason", [
    ({"version": 1, "config": []}, "version '1' is not 2"),
    ({"version": 2}, "no ethernets"),
    ({"version": 2, "ethernets": {"eth0": {"addresses": ["10.0.0.5"]}}}, "want CIDR"),
    ({"version": 2, "ethernets": {"eth0": {"addresses": ["10.0.0.5/24; reboot"]}}}, "bad address"),
    ({"version": 2, "ethernets": {"eth0": {"match": {"macaddress": "zz"}}}}, "bad macaddress"),
    ({"version": 2, "ethernets": {"e$(x)": {"dhcp4": True}}}, "bad ethernet id"),
    ({"version": 2, "ethernets": {"eth0": {"gateway4": "10.0.0.1 x"}}}, "bad gateway4"),
])
def test_net_plan_rejects_bad_configs(net, reason, tmp_path):
    rc, kv, err = flatten(yaml.safe_dump(net), tmp_path)
    assert rc == 0, err
    (tmp_path / "net.kv").write_text("".join(f"{k}\t{v}\n" for k, v in kv.items()))
    p = sh("net_plan net.kv", tmp_path)
    assert p.returncode == 1 and reason in p.stdout.splitlines()[-1], p.stdout


def test_dhcp_and_match_by_name(tmp_path):
    net = {"version": 2, "ethernets": {"lan": {"match": {"name": "eth*"}, "dhcp4": True}}}
    rc, kv, err = flatten(yaml.safe_dump(net), tmp_path)
    (tmp_path / "net.kv").write_text("".join(f"{k}\t{v}\n" for k, v in kv.items()))
    p = sh("net_plan net.kv", tmp_path)
    assert p.returncode == 0 and p.stdout.splitlines() == ["iface lan - eth* -", "dhcp lan"]


def test_hostname_sanitising(tmp_path):
    assert sh("sanitize_hostname 'we b;1$(x)'", tmp_path).stdout.strip() == "web1x"
