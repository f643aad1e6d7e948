"""The lab state file (lab.json): round trip, permissions, bad content."""

import json
import stat

import pytest

from lab import state as st
from lab.errors import LabError


def _sample() -> st.LabState:
    s = st.LabState(prefix="kt1", hosts=["h1", "h2"], runtime_dirs_created=["/run/netns"])
    s.note_netns("kt1-fab")
    s.note_netns("kt1-fab")
    s.processes["libvirtd-h1"] = st.ProcRecord("libvirtd-h1", 123, 456, ["libvirtd"], "/x/log", "kt1-h1")
    s.sockets["libvirtd-h1"] = "/x/run/libvirt-sock"
    return s


def test_round_trip_and_mode(tmp_path):
    st.save(tmp_path, _sample())
    p = tmp_path / "lab.json"
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    back = st.load(tmp_path)
    assert back == _sample()
    assert back.netns == ["kt1-fab"]
    assert json.loads(p.read_text())["processes"]["libvirtd-h1"]["pid"] == 123


def test_missing_file_is_no_lab(tmp_path):
    assert st.load(tmp_path) is None


@pytest.mark.parametrize("content", ["not json", "{}", '{"version": 99, "prefix": "x"}', '{"version": 1}'])
def test_bad_content_is_a_clear_error(tmp_path, content):
    (tmp_path / "lab.json").write_text(content)
    with pytest.raises(LabError) as e:
        st.load(tmp_path)
    assert e.value.code == "InvalidLabState"


def test_remove_is_idempotent(tmp_path):
    st.save(tmp_path, _sample())
    st.remove(tmp_path)
    st.remove(tmp_path)
    assert list(tmp_path.iterdir()) == []
