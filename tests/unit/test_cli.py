"""CLI tests: `kumo` commands against a fake API (httpx.MockTransport via the client factory)."""
from __future__ import annotations

import base64
import json
import stat

import pytest
from typer.testing import CliRunner

from controller.cli.main import app
from test_cli_support import FakeKumo, instance

runner = CliRunner()


@pytest.fixture
def fake() -> FakeKumo:
    return FakeKumo()


def kumo(fake: FakeKumo, *args: str, state=None, env=None):
    env = {"KUMO_API_KEY": "secret", "KUMO_URL": "http://controller:8787", **(env or {})}
    return runner.invoke(app, list(args), obj=state or fake.state(), env=env)


def test_json_output_is_the_api_object(fake):
    fake.instances["i-1"] = instance("i-1", state="running", tags={"Name": "web"})
    r = kumo(fake, "instances", "describe", "i-1", "--output", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == fake.instances["i-1"]
    assert fake.url == "http://controller:8787" and fake.api_key == "secret"


def test_global_output_option_and_url_flag(fake):
    fake.instances["i-1"] = instance("i-1")
    r = kumo(fake, "--url", "unix:/run/kumo.sock", "-o", "json", "instances", "describe", "i-1")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["instance_id"] == "i-1"
    assert fake.url == "unix:/run/kumo.sock"


def test_table_output_shows_rows(fake):
    fake.instances["i-1"] = instance("i-1", state="running", tags={"Name": "web"})
    r = kumo(fake, "instances", "list")
    assert r.exit_code == 0, r.output
    assert "i-1" in r.stdout and "running" in r.stdout and "web" in r.stdout
    assert not r.stdout.lstrip().startswith("{")


def test_list_follows_next_token(fake):
    for n in range(5):
        fake.instances[f"i-{n}"] = instance(f"i-{n}")
    r = kumo(fake, "instances", "list", "-o", "json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert [i["instance_id"] for i in out["items"]] == [f"i-{n}" for n in range(5)]
    assert out["next_token"] is None
    tokens = [req.url.params.get("next_token") for req in fake.requests]
    assert tokens == [None, "2", "4"]


def test_list_filters_go_to_the_query(fake):
    fake.instances["i-1"] = instance("i-1", state="running", tags={"Name": "web"})
    fake.instances["i-2"] = instance("i-2", state="running", tags={"Name": "db"})
    fake.instances["i-3"] = instance("i-3", state="stopped", tags={"Name": "web"})
    r = kumo(fake, "instances", "list", "--state", "running", "--tag", "Name=web", "-o", "json")
    assert r.exit_code == 0, r.output
    assert [i["instance_id"] for i in json.loads(r.stdout)["items"]] == ["i-1"]
    params = fake.requests[0].url.params
    assert params["state"] == "running" and params["tag:Name"] == "web"


def test_api_error_prints_code_and_message_and_exits_1(fake):
    r = kumo(fake, "instances", "describe", "i-404")
    assert r.exit_code == 1
    assert r.stderr.strip() == "error: InvalidInstanceID.NotFound: instance i-404 not found"
    assert r.stdout == ""


def test_missing_api_key_is_an_api_error(fake):
    r = runner.invoke(app, ["instances", "list"], obj=fake.state(), env={"KUMO_API_KEY": None})
    assert r.exit_code == 1
    assert r.stderr.startswith("error: AuthFailure: ")
    assert "set KUMO_API_KEY" in r.stderr


def test_usage_errors_exit_2(fake):
    assert kumo(fake, "instances", "run", "--type", "t3.micro").exit_code == 2  # no --image
    r = kumo(fake, "instances", "run", "--image", "x", "--type", "t3.micro", "--tag", "novalue")
    assert r.exit_code == 2 and "KEY=VALUE" in r.output
    assert kumo(fake, "instances", "list", "-o", "yaml").exit_code == 2
    assert kumo(fake, "nonsense").exit_code == 2
    assert fake.requests == []


def test_fastapi_validation_errors_and_plain_500s_are_reported(fake):
    r = kumo(fake, "hosts", "disable", "x")
    assert r.exit_code == 1
    assert r.stderr.strip() == "error: InvalidParameterValue: path.host_id: bad host"


def test_run_sends_the_documented_body(fake, tmp_path):
    ud = tmp_path / "ud"
    ud.write_bytes(b"#!/bin/sh\necho hi\n")
    r = kumo(fake, "instances", "run", "--image", "kumo-tiny", "--type", "t3.micro", "--count", "3",
             "--min-count", "2", "--key", "k1", "--user-data-file", str(ud), "--root-disk-gib", "2",
             "--tag", "Name=web", "--tag", "env=a=b", "--client-token", "tok",
             "--subnet", "subnet-0123456789abcdef0", "--private-ip", "10.0.1.9", "--no-public-ip",
             "--security-group", "sg-1", "--security-group", "sg-2", "-o", "json")
    assert r.exit_code == 0, r.output
    body = json.loads(fake.requests[0].content)
    assert body == {"image": "kumo-tiny", "instance_type": "t3.micro", "min_count": 2,
                    "max_count": 3, "key_name": "k1", "root_disk_gib": 2,
                    "tags": {"Name": "web", "env": "a=b"}, "client_token": "tok",
                    "subnet_id": "subnet-0123456789abcdef0", "private_ip": "10.0.1.9",
                    "associate_public_ip": False, "security_group_ids": ["sg-1", "sg-2"],
                    "user_data": base64.b64encode(b"#!/bin/sh\necho hi\n").decode()}
    out = json.loads(r.stdout)
    assert set(out) == {"reservation_id", "instances"} and len(out["instances"]) == 3


def test_run_min_count_defaults_to_count(fake):
    r = kumo(fake, "instances", "run", "--image", "kumo-tiny", "--type", "t3.micro", "--count", "2")
    assert r.exit_code == 0, r.output
    body = json.loads(fake.requests[0].content)
    assert body["min_count"] == body["max_count"] == 2 and "user_data" not in body


def test_run_error_from_api(fake):
    r = kumo(fake, "instances", "run", "--image", "kumo-tiny", "--type", "huge")
    assert r.exit_code == 1
    assert r.stderr.strip() == "error: InvalidInstanceType: no type huge"


def test_actions_post_to_the_right_paths(fake):
    fake.instances["i-1"] = instance("i-1", state="running")
    assert kumo(fake, "instances", "stop", "i-1", "--force").exit_code == 0
    assert fake.requests[-1].url.params["force"] == "true"
    assert kumo(fake, "instances", "reboot", "i-1").exit_code == 0
    r = kumo(fake, "instances", "modify", "i-1", "--type", "t3.small", "-o", "json")
    assert json.loads(r.stdout)["instance_type"] == "t3.small"
    assert json.loads(fake.requests[-1].content) == {"instance_type": "t3.small"}
    assert fake.paths() == ["POST /v1/instances/i-1/stop", "POST /v1/instances/i-1/reboot",
                            "PATCH /v1/instances/i-1"]
    assert "force" not in fake.requests[1].url.params


def test_start_in_wrong_state_is_an_error(fake):
    fake.instances["i-1"] = instance("i-1", state="running")
    r = kumo(fake, "instances", "start", "i-1")
    assert r.exit_code == 1 and "IncorrectInstanceState" in r.stderr


def test_terminate_many_reports_each_failure_and_exits_1(fake):
    fake.instances["i-1"] = instance("i-1", state="running")
    fake.instances["i-2"] = instance("i-2", state="running")
    r = kumo(fake, "instances", "terminate", "i-1", "i-missing", "i-2", "-o", "json")
    assert r.exit_code == 1
    assert [i["instance_id"] for i in json.loads(r.stdout)["items"]] == ["i-1", "i-2"]
    assert "error: InvalidInstanceID.NotFound: i-missing:" in r.stderr
    assert fake.instances["i-2"]["state"] == "shutting-down"


def test_console_prints_output_and_top_level_alias(fake):
    fake.instances["i-1"] = instance("i-1", state="running")
    for args in (["instances", "console", "i-1"], ["console", "i-1"]):
        r = kumo(fake, *args)
        assert r.exit_code == 0 and r.stdout == "boot\nKUMO-READY\n"
    r = kumo(fake, "console", "i-1", "-o", "json")
    assert set(json.loads(r.stdout)) == {"instance_id", "output", "timestamp"}


def test_status_json(fake):
    fake.instances["i-1"] = instance("i-1", state="running", instance_status="ok")
    r = kumo(fake, "instances", "status", "i-1", "-o", "json")
    assert json.loads(r.stdout) == {"instance_id": "i-1", "state": "running",
                                    "instance_status": "ok", "system_status": "ok",
                                    "details": []}


def test_path_injection_in_ids_is_refused(fake):
    r = kumo(fake, "instances", "describe", "../accounts")
    assert r.exit_code == 2 and fake.requests == []


def test_keys_create_writes_private_key_0600_and_never_prints_it(fake, tmp_path):
    dest = tmp_path / "k" / "mykey"
    r = kumo(fake, "keys", "create", "mykey", "--out", str(dest), "-o", "json")
    assert r.exit_code == 0, r.output
    assert "PRIVATE KEY" in dest.read_text()
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    out = json.loads(r.stdout)
    assert "private_key" not in out and out["name"] == "mykey"
    assert "PRIVATE KEY" not in r.output
    # A second create must not overwrite the saved key (refused before calling the API).
    n = len(fake.requests)
    r = kumo(fake, "keys", "create", "other", "--out", str(dest))
    assert r.exit_code == 1 and "FileExists" in r.stderr and len(fake.requests) == n


def test_keys_create_defaults_to_home_dir(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    r = kumo(fake, "keys", "create", "k2")
    assert r.exit_code == 0, r.output
    path = tmp_path / ".kumo" / "keys" / "k2"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_keys_import_and_list(fake, tmp_path):
    pub = tmp_path / "id.pub"
    pub.write_text("ssh-ed25519 AAAAC3Nza test\n")
    r = kumo(fake, "keys", "import", "imp", "--public-key-file", str(pub), "-o", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(fake.requests[-1].content) == {"name": "imp",
                                                     "public_key": "ssh-ed25519 AAAAC3Nza test"}
    r = kumo(fake, "keys", "list", "-o", "json")
    assert [k["name"] for k in json.loads(r.stdout)["items"]] == ["imp"]


def test_images_import_streams_the_file(fake, tmp_path):
    f = tmp_path / "disk.qcow2"
    f.write_bytes(b"QFI\xfb" + b"\0" * 100)
    r = kumo(fake, "images", "import", str(f), "--name", "mine", "-o", "json")
    assert r.exit_code == 0, r.output
    req = fake.requests[-1]
    assert req.url.params["name"] == "mine" and req.url.params["format"] == "qcow2"
    assert req.url.params["public"] == "false"
    assert json.loads(r.stdout)["size"] == 104


def test_types_list_and_retire(fake):
    r = kumo(fake, "types", "list", "-o", "json")
    assert json.loads(r.stdout)["items"][0]["name"] == "t3.micro"
    r = kumo(fake, "types", "retire", "t3.micro", "-o", "json")
    assert r.exit_code == 0, r.output
    assert fake.paths()[-1] == "DELETE /v1/instance-types/t3.micro"


def test_connection_error_is_reported(fake):
    import httpx

    def refuse(url, key):
        def handler(request):
            raise httpx.ConnectError("connection refused")
        return httpx.Client(base_url="http://x", transport=httpx.MockTransport(handler))
    st = fake.state()
    st.client_factory = refuse
    r = kumo(fake, "instances", "list", state=st)
    assert r.exit_code == 1 and r.stderr.startswith("error: ConnectionError: ")


def test_lab_and_image_sub_apps_exist():
    r = runner.invoke(app, ["lab", "--help"])
    assert r.exit_code == 0 and "up" in r.stdout and "env" in r.stdout
    r = runner.invoke(app, ["image", "--help"])
    assert r.exit_code == 0 and "build" in r.stdout


def test_images_register_body(fake):
    r = kumo(fake, "images", "register", "--name", "kumo-tiny", "--path", "/var/cache/x.qcow2",
             "--public", "--ready-marker", "KUMO-READY", "-o", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(fake.requests[-1].content) == {
        "name": "kumo-tiny", "path": "/var/cache/x.qcow2", "format": "qcow2", "public": True,
        "architecture": "x86_64", "ready_marker": "KUMO-READY"}
    assert json.loads(r.stdout)["image_id"] == "ami-00000000000000003"


def test_events_list_filters_pages_and_limit(fake):
    r = kumo(fake, "events", "list", "--resource-id", "i-1", "-o", "json")
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)["items"]) == 5
    assert all(req.url.params["resource_id"] == "i-1" for req in fake.requests)
    assert len(fake.requests) == 3
    r = kumo(fake, "events", "list", "--limit", "3", "-o", "json")
    assert [e["event_id"] for e in json.loads(r.stdout)["items"]] == ["ev-0", "ev-1", "ev-2"]
    assert len(fake.requests) == 5  # two pages were enough for three events


def test_accounts_create_shows_the_key_once(fake):
    r = kumo(fake, "accounts", "create", "demo", "-o", "json")
    assert json.loads(r.stdout) == {"account_id": "acct-2", "name": "demo", "api_key": "kumo_xyz"}


def test_hosts_list_table(fake):
    r = kumo(fake, "hosts", "list")
    assert r.exit_code == 0, r.output
    row = next(line for line in r.stdout.splitlines() if "host-1" in line)
    assert "2/8" in row and "1024/16384" in row and "1.0/100.0" in row


def test_repeated_next_token_is_an_error_not_a_hang(fake):
    import httpx

    def looping(url, key):
        return httpx.Client(base_url="http://x", transport=httpx.MockTransport(
            lambda req: httpx.Response(200, json={"items": [{"name": "a"}], "next_token": "t"})))
    st = fake.state()
    st.client_factory = looping
    r = kumo(fake, "keys", "list", state=st)
    assert r.exit_code == 1 and "InvalidResponse" in r.stderr and "repeated" in r.stderr


def test_api_plain_500_and_non_json_responses(fake):
    import httpx

    from controller.cli.api import Api, ApiError, CliError

    api = Api(fake.factory("http://x", "secret"))
    with pytest.raises(ApiError) as ei:
        api.get("/v1/broken")
    assert (ei.value.code, ei.value.message, ei.value.status) == (
        "HTTP500", "Internal Server Error", 500)
    odd = Api(httpx.Client(base_url="http://x", transport=httpx.MockTransport(
        lambda req: httpx.Response(200, text="<html>"))))
    with pytest.raises(CliError) as ei:
        odd.get("/v1/instances")
    assert ei.value.code == "InvalidResponse"
