"""`lab env` output and the status report (pure)."""

import shlex
import subprocess

import pytest

from lab import Lab, LabError
from lab.report import HostStatus, LabStatus, ProcStatus, render_env


def _shell_eval(text: str, var: str) -> str:
    return subprocess.run(["sh", "-c", text + f'\nprintf %s "${var}"'], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip


def test_admin_env_reads_the_controller_key(tmp_path):
    (tmp_path / "controller").mkdir()
    (tmp_path / "controller" / "admin.key").write_text("kumo-admin-secret\n")
    lab = Lab(tmp_path, prefix="kt1", listen="127.0.0.1:8787")
    out = lab.env(admin=True)
    assert "export KUMO_URL=http://127.0.0.1:8787\n" in out
    assert _shell_eval(out, "KUMO_API_KEY") == "kumo-admin-secret"


def test_demo_env_reads_demo_key_and_custom_listen(tmp_path):
    (tmp_path / "demo.key").write_text("demo-key")
    out = Lab(tmp_path, prefix="kt1", listen="127.0.0.1:9999").env(admin=False)
    assert _shell_eval(out, "KUMO_URL") == "http://127.0.0.1:9999"
    assert _shell_eval(out, "KUMO_API_KEY") == "demo-key"


def test_missing_key_is_a_comment_not_an_error(tmp_path):
    out = Lab(tmp_path, prefix="kt1").env(admin=True)
    assert "KUMO_API_KEY" not in out.replace("# no", "")
    assert out.splitlines()[-1].startswith("# no admin API key yet")
    assert "export KUMO_LAB_PREFIX=kt1" in out.splitlines()
    _shell_eval(out, "KUMO_URL")  # still valid shell


def test_hostile_key_is_quoted(tmp_path):
    key = "a'b; rm -rf / $(x)"
    (tmp_path / "k").write_text(key)
    out = render_env("http://127.0.0.1:8787", tmp_path / "k", "admin")
    assert f"export KUMO_API_KEY={shlex.quote(key)}" in out
    assert _shell_eval(out, "KUMO_API_KEY") == key


@pytest.mark.parametrize("listen", ["8787", "127.0.0.1:", "127.0.0.1:x", "127.0.0.1:70000"])
def test_bad_listen(listen, tmp_path):
    with pytest.raises(LabError) as e:
        Lab(tmp_path, listen=listen).url
    assert e.value.code == "InvalidListen"


def _status(answering: bool) -> LabStatus:
    host = HostStatus("h1", "kt-h1", True, "172.31.0.11/24", True, "qemu:///system?socket=/s",
                      ProcStatus("libvirtd-h1", 10, True, answering))  # fmt: skip
    return LabStatus("kt", "/s", True, "kt-fab", True, "kt-inet", True, hosts=[host])


def test_status_ok_needs_every_part():
    assert _status(True).ok
    bad = _status(False)
    assert not bad.ok and not bad.to_dict()["hosts"][0]["ok"]
    assert "NOT OK" in bad.to_text() and "libvirtd running (pid 10)" in bad.to_text()
    assert "controller: not started" in _status(True).to_text()


def test_status_says_where_the_api_keys_are(tmp_path):
    status = LabStatus("kt", str(tmp_path), True, "kt-fab", True, "kt-inet", True, hosts=[])
    assert "API key" not in status.to_text()
    (tmp_path / "controller").mkdir()
    (tmp_path / "controller" / "admin.key").write_text("k\n")
    (tmp_path / "demo.key").write_text("k\n")
    text = status.to_text()
    assert f"admin API key: {tmp_path}/controller/admin.key" in text
    assert f"demo API key: {tmp_path}/demo.key" in text


def test_status_reports_the_storage_node():
    from lab.report import StorageStatus
    st = _status(True)
    st.storage = StorageStatus("kt-sn", True, "100.64.0.250/24", True, 10809, "/s/storage/storage.sock",
                               ProcStatus("storage", 42, True, True))
    assert st.ok and st.to_dict()["storage"]["ok"]
    text = st.to_text()
    assert "storage kt-sn 100.64.0.250/24: netns ok, uplink up, node answering (pid 42)" in text
    assert "API unix:/s/storage/storage.sock, NBD 100.64.0.250:10809" in text
    st.storage.service = ProcStatus("storage", 42, True, False)
    assert not st.ok and not st.to_dict()["storage"]["ok"] and not st.to_dict()["ok"]
    st.storage.service = None  # namespace only (no services): fine
    assert st.ok and "node not started" in st.to_text()
