"""`kumo ssh`: the pure argv builder and the command's lookup of host, address and key file."""
from __future__ import annotations

import shlex

import pytest
from typer.testing import CliRunner

from controller.cli.api import CliError
from controller.cli.main import app
from controller.cli.ssh import argv_for_instance, lab_namespace, ssh_argv
from test_cli_support import FakeKumo, instance

runner = CliRunner()


def test_ssh_argv_exact():
    assert ssh_argv(namespace="kumo-host-1", ip="10.0.0.5", key_file="/k/id",
                    command=["uname", "-a"]) == [
        "ip", "netns", "exec", "kumo-host-1", "ssh", "-i", "/k/id",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
        "--", "root@10.0.0.5", "uname", "-a"]


def test_ssh_argv_without_command_and_other_user():
    argv = ssh_argv(namespace="ns", ip="fd00::5", key_file="k", user="debian")
    assert argv[-2:] == ["--", "debian@fd00::5"]


@pytest.mark.parametrize("kw", [dict(ip="10.0.0.5; rm -rf /"), dict(ip="-oProxyCommand=x"),
                                dict(user="root@evil"), dict(user="-x")])
def test_ssh_argv_rejects_bad_values(kw):
    args = dict(namespace="ns", ip="10.0.0.5", key_file="k") | kw
    with pytest.raises(CliError):
        ssh_argv(**args)


def test_lab_namespace():
    assert lab_namespace("kumo", "inet") == "kumo-inet"
    for bad in ("", "../x", "a b", "-x"):
        with pytest.raises(CliError):
            lab_namespace("kumo", bad)
        with pytest.raises(CliError):
            lab_namespace(bad, "host-1")


def test_argv_for_instance_uses_saved_key(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    key = tmp_path / ".kumo" / "keys" / "k1"
    key.parent.mkdir(parents=True)
    key.write_text("x")
    inst = instance("i-1", state="running", host_id="host-2", private_ip="10.1.0.7", key_name="k1",
                    public_ip="203.0.113.7")
    argv = argv_for_instance(inst, prefix="lab", identity=None, command=["true"])
    assert argv[:4] == ["ip", "netns", "exec", "lab-inet"]
    assert argv[argv.index("-i") + 1] == str(key)
    assert argv[-2:] == ["root@203.0.113.7", "true"]


@pytest.mark.parametrize("kw,code", [
    (dict(state="stopped"), "IncorrectInstanceState"),
    (dict(public_ip=None), "NoPublicAddress"),
    (dict(key_name=None), "MissingIdentity"),
    (dict(key_name="absent"), "IdentityNotFound"),
])
def test_argv_for_instance_errors(kw, code, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    inst = instance("i-1", **({"state": "running", "private_ip": "10.0.0.1", "key_name": "k",
                               "public_ip": "203.0.113.9"} | kw))
    with pytest.raises(CliError) as ei:
        argv_for_instance(inst, prefix="kumo", identity=None)
    assert ei.value.code == code


def test_ssh_command_execs_the_argv(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    ident = tmp_path / "id"
    ident.write_text("x")
    fake = FakeKumo()
    fake.instances["i-1"] = instance("i-1", state="running", host_id="host-1",
                                     private_ip="10.0.0.9", public_ip="203.0.113.9")
    calls = []
    st = fake.state(execvp=lambda file, argv: calls.append((file, argv)))
    r = runner.invoke(app, ["ssh", "--identity", str(ident), "i-1", "--", "ls", "-la"], obj=st,
                      env={"KUMO_API_KEY": "secret", "KUMO_LAB_PREFIX": "t1"})
    assert r.exit_code == 0, r.output
    assert calls == [("ip", ["ip", "netns", "exec", "t1-inet", "ssh", "-i", str(ident),
                             "-o", "StrictHostKeyChecking=no", "-o",
                             "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "--", "root@203.0.113.9", "ls", "-la"])]
    # --dry-run prints the same command instead of running it
    r = runner.invoke(app, ["ssh", "-i", str(ident), "--dry-run", "i-1", "hostname"], obj=st,
                      env={"KUMO_API_KEY": "secret"})
    assert r.exit_code == 0, r.output
    assert shlex.split(r.stdout)[3] == "kumo-inet" and len(calls) == 1


def test_ssh_unknown_instance_is_an_api_error():
    fake = FakeKumo()
    st = fake.state(execvp=lambda *a: pytest.fail("must not exec"))
    r = runner.invoke(app, ["ssh", "i-nope"], obj=st, env={"KUMO_API_KEY": "secret"})
    assert r.exit_code == 1 and r.stderr.startswith("error: InvalidInstanceID.NotFound:")


def test_ssh_exec_failure_is_reported(tmp_path):
    ident = tmp_path / "id"
    ident.write_text("x")
    fake = FakeKumo()
    fake.instances["i-1"] = instance("i-1", state="running", private_ip="10.0.0.9",
                                     public_ip="203.0.113.9")

    def missing(file, argv):
        raise FileNotFoundError(2, "No such file or directory")
    r = runner.invoke(app, ["ssh", "-i", str(ident), "i-1"], obj=fake.state(execvp=missing),
                      env={"KUMO_API_KEY": "secret"})
    assert r.exit_code == 1 and r.stderr.startswith("error: ExecFailed: cannot run ip:")
