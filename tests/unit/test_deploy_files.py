"""The files deploy/ installs on real hosts, checked without installing anything:

- deploy/etc/ROLE.env lists exactly the fields of that role's pydantic Settings class (plus the
  process's log level), each with its own comment, commented defaults equal to the real ones:
  a new setting without documentation here fails;
- deploy/systemd/*.service pass `systemd-analyze verify` with no warning at all, and the
  sandboxed ones stay within an exposure level (`systemd-analyze security --offline`);
- deploy/envfile.py's precedence (explicit > on disk > role default > template), secrets kept;
- shellcheck over every deploy/ script, `ruby -c` over the Vagrantfile (when installed:
  deploy/lib.sh KUMO_TEST_DEBIAN_PACKAGES has both).
"""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import TypeAdapter

from agent.settings import AgentSettings
from agent.storage_node.settings import StorageSettings
from controller.settings import Settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"

# role -> (Settings class, env prefix, the process's own variables that are not Settings fields)
ROLES = {
    "controller": (Settings, "KUMO_", {"KUMO_LOG_LEVEL"}),
    "agent": (AgentSettings, "KUMO_AGENT_", {"KUMO_AGENT_LOG_LEVEL"}),
    "storage-node": (StorageSettings, "KUMO_STORAGE_", {"KUMO_STORAGE_LOG_LEVEL"}),
}
UNITS = {"controller": ("kumo-controller.service", "controller"),
         "agent": ("kumo-agent.service", "agent"),
         "storage-node": ("kumo-storage-node.service", "agent.storage_node")}
SETTING = re.compile(r"^(#?)([A-Z][A-Z0-9_]*)=(.*)$")


def _envfile():
    spec = importlib.util.spec_from_file_location("kumo_deploy_envfile", DEPLOY / "envfile.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _template_lines(role: str) -> list[str]:
    return (DEPLOY / "etc" / f"{role}.env").read_text().splitlines()


def _settings_keys(role: str) -> dict[str, str]:
    cls, prefix, _ = ROLES[role]
    return {f"{prefix}{name.upper()}": name for name in cls.model_fields}


@pytest.mark.parametrize("role", sorted(ROLES))
def test_env_template_lists_exactly_the_settings(role):
    keys = [m[2] for m in map(SETTING.match, _template_lines(role)) if m]
    assert len(keys) == len(set(keys)), f"a key listed twice in deploy/etc/{role}.env"
    expected = set(_settings_keys(role)) | ROLES[role][2]
    missing = sorted(expected - set(keys))
    unknown = sorted(set(keys) - expected)
    assert not missing, (f"settings of {ROLES[role][0].__name__} not documented in "
                         f"deploy/etc/{role}.env: {missing}")
    assert not unknown, f"deploy/etc/{role}.env lists what the settings do not have: {unknown}"


@pytest.mark.parametrize("role", sorted(ROLES))
def test_every_setting_has_its_own_comment(role):
    lines = _template_lines(role)
    for i, line in enumerate(lines):
        m = SETTING.match(line)
        if not m:
            continue
        above = lines[i - 1] if i else ""
        assert above.startswith("# ") and not SETTING.match(above[1:].strip()) \
            and not above.startswith("# ----") and len(above) > 6, \
            f"deploy/etc/{role}.env: {m[2]} needs a comment line right above it"


@pytest.mark.parametrize("role", sorted(ROLES))
def test_commented_defaults_are_the_real_defaults(role):
    cls, _, extras = ROLES[role]
    names = _settings_keys(role)
    for line in _template_lines(role):
        m = SETTING.match(line)
        if not m or m[2] in extras:
            continue
        field = cls.model_fields[names[m[2]]]
        if not m[1]:
            continue  # set by the installer (a secret, the database URL): not a default
        shown = m[3]
        if field.default_factory is not None or field.default is None:
            assert shown == "", f"{m[2]}: a computed or empty default is shown as empty"
            continue
        value = TypeAdapter(field.annotation).validate_python(shown)
        assert value == field.default, f"{m[2]}: shows {shown!r}, the default is {field.default!r}"


def _unit_copy(tmp_path: Path, name: str) -> Path:
    """The unit with /opt/kumo/venv's python replaced by this interpreter, which exists here
    (verify checks that ExecStart's program is executable)."""
    text = (DEPLOY / "systemd" / name).read_text()
    dest = tmp_path / name
    dest.write_text(text.replace("/opt/kumo/venv/bin/python", sys.executable))
    return dest


@pytest.mark.parametrize("role", sorted(UNITS))
def test_unit_shape(role):
    name, module = UNITS[role]
    text = (DEPLOY / "systemd" / name).read_text()
    assert f"EnvironmentFile=/etc/kumo/{role}.env\n" in text
    assert f"ExecStart=/opt/kumo/venv/bin/python -m {module}\n" in text
    assert importlib.util.find_spec(module + ".__main__") is not None
    assert "Restart=on-failure\n" in text
    assert "StandardOutput=journal\n" in text and "StandardError=journal\n" in text
    assert "WantedBy=multi-user.target\n" in text
    if role == "agent":
        assert "User=root\n" in text  # libvirt, netlink, nftables, namespaces
        # nothing that gives the agent a mount namespace of its own (its /run/netns must be
        # the machine's)
        for opt in ("ProtectSystem=", "PrivateTmp=", "PrivateDevices=", "ProtectHome=",
                    "ProtectKernelTunables=", "ReadWritePaths=", "TemporaryFileSystem="):
            assert f"\n{opt}" not in text, opt
    else:
        assert "User=kumo\n" in text and "ProtectSystem=strict\n" in text


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
@pytest.mark.parametrize("role", sorted(UNITS))
def test_unit_passes_systemd_analyze_verify(role, tmp_path):
    unit = _unit_copy(tmp_path, UNITS[role][0])
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                       capture_output=True, text=True, timeout=60)
    # verify exits 0 on an unknown key or a bad value (it only warns): any output fails here
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), \
        f"systemd-analyze verify {UNITS[role][0]}:\n{r.stdout}{r.stderr}"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verify_would_catch_a_typo(tmp_path):
    """The positive control of the test above: a misspelt key is reported."""
    unit = _unit_copy(tmp_path, "kumo-controller.service")
    unit.write_text(unit.read_text().replace("LockPersonality=", "LockPersonalty="))
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                       capture_output=True, text=True, timeout=60)
    assert "LockPersonalty" in r.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
@pytest.mark.parametrize("role,limit", [("controller", 2.5), ("storage-node", 2.5),
                                        ("agent", 9.0)])
def test_unit_exposure(role, limit, tmp_path):
    unit = _unit_copy(tmp_path, UNITS[role][0])
    r = subprocess.run(["systemd-analyze", "security", "--offline=true",
                        f"--threshold={int(limit * 10)}", str(unit)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"exposure above {limit}:\n{r.stdout[-600:]}{r.stderr}"


# ---- deploy/envfile.py -------------------------------------------------------------------------

TEMPLATE = """# a
#K_A=1
# secret
K_TOKEN={secret}
# url
K_URL=pg://u:{secret}@/db
# b
#K_B=2
"""


def test_envfile_fresh_render_generates_secrets():
    ef = _envfile()
    out = ef.render(TEMPLATE, {}, {}, {"K_B": "3"})
    values = ef.parse(out)
    assert re.fullmatch(r"[A-Za-z0-9_-]{40,}", values["K_TOKEN"])
    assert re.fullmatch(r"pg://u:[A-Za-z0-9_-]{40,}@/db", values["K_URL"])
    assert values["K_B"] == "3" and "#K_A=1" in out and "K_A" not in values


def test_envfile_precedence_and_kept_values():
    ef = _envfile()
    existing = {"K_TOKEN": "old", "K_URL": "pg://u:pw@/db", "K_B": "edited", "K_GONE": "x"}
    out = ef.render(TEMPLATE, existing, {"K_A": "9"}, {"K_B": "3"})
    values = ef.parse(out)
    assert values == {"K_A": "9", "K_TOKEN": "old", "K_URL": "pg://u:pw@/db", "K_B": "edited",
                      "K_GONE": "x"}
    assert ef.KEPT_MARKER in out
    assert ef.render(TEMPLATE, values, {"K_A": "9"}, {"K_B": "3"}) == out  # a fixed point


def test_envfile_print_masks_secrets():
    ef = _envfile()
    out = ef.render(TEMPLATE, {"K_URL": "pg://u:pw@/db"}, {"K_TOKEN": "s3cr3t-value"}, {}, mask=True)
    assert "s3cr3t-value" not in out and ":pw@" not in out
    assert "K_TOKEN=<secret: given on the command line>" in out


# ---- linters -----------------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="no shellcheck (deploy/lib.sh KUMO_TEST_DEBIAN_PACKAGES)")
def test_deploy_scripts_pass_shellcheck():
    scripts = sorted(str(p.relative_to(REPO)) for p in DEPLOY.rglob("*.sh"))
    assert "deploy/roles/controller.sh" in scripts
    r = subprocess.run(["shellcheck", "-x", *scripts], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.skipif(shutil.which("ruby") is None,
                    reason="no ruby (deploy/lib.sh KUMO_TEST_DEBIAN_PACKAGES)")
def test_vagrantfile_ruby_syntax():
    r = subprocess.run(["ruby", "-c", str(REPO / "Vagrantfile")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "Syntax OK" in r.stdout, r.stdout + r.stderr


def test_vagrantfile_uses_the_role_commands():
    """The role commands, nested KVM, and every agent VM joining with its own one-time token
    (mutual TLS; no shared token on the agents)."""
    text = (REPO / "Vagrantfile").read_text()
    for needle in ("deploy/roles/controller.sh", "deploy/roles/agent.sh", "nested = true",
                   'cpu_mode = "host-passthrough"', "private_network", "--agent-auth mtls",
                   "hosts join-token", "--join-token-file", "--ca-sha256"):
        assert needle in text, needle
    agent_part = text.split("AGENTS.each do", 1)[1].split('config.vm.define "kumo-lab"', 1)[0]
    assert "--token-file" not in agent_part and "AGENT_TOKEN" not in agent_part
