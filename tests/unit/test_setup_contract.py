"""The set-up contract: README's two commands, .ci/run running exactly the test command, Vagrantfile."""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)\n\s*```", setup, flags=re.S)


def test_readme_gives_exactly_two_setup_commands():
    commands = [c.strip() for c in _readme_commands()]
    assert commands == ["bash deploy/install.sh", "bash deploy/test.sh"]
    for command in commands:
        assert (ROOT / command.split()[1]).is_file()


def test_ci_runs_the_readme_test_command_and_nothing_else():
    lines = [l for l in (ROOT / ".ci/run").read_text().splitlines()
             if l.strip() and not l.startswith("#")]
    assert lines[-1] == "exec bash deploy/test.sh"
    assert all(l.startswith(("set ", "cd ")) for l in lines[:-1])


@pytest.mark.skipif(shutil.which("vagrant") is None, reason="vagrant is not installed")
def test_vagrantfile_validates(tmp_path):
    """Vagrant's own validation, with the vagrant-libvirt provider's checks of its settings
    (deploy/test.sh installs both; no VM is started). On a copy: evaluating the Vagrantfile
    makes .vagrant/ (the agent token) beside it, and Vagrant keeps state in VAGRANT_HOME."""
    (tmp_path / "Vagrantfile").write_text((ROOT / "Vagrantfile").read_text())
    # No version check with HashiCorp's servers (Vagrant's "checkpoint"): nothing leaves the
    # machine.
    env = {**os.environ, "VAGRANT_HOME": str(tmp_path / "vagrant-home"),
           "VAGRANT_CHECKPOINT_DISABLE": "1"}
    r = subprocess.run(["vagrant", "validate"], cwd=tmp_path, env=env, timeout=120,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "validated successfully" in r.stdout
