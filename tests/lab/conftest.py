"""Fixtures for tests with real guests and real packets: a session-wide 2-host lab (unique prefix,
temporary state dir, always torn down), a runner for commands inside lab namespaces, and a factory
for test bridges inside host namespaces. Skips with a clear reason when not root or libvirt is
missing. KUMO_LAB_SERVICES=none starts the lab without controller/agents.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import pytest

from lab import Lab
from lab.testing import free_port, make_bridge, ns_run, remove_bridge, skip_reason, unique_prefix


#: The session's lab while it is up, for the failure report below.
_ACTIVE: dict[str, Lab] = {}
#: Characters of each service log a failed lab test's report shows.
LOG_TAIL_CHARS = 4000


def _log_tails(the_lab: Lab) -> list[tuple[str, str]]:
    logs = sorted(the_lab.state_dir.glob("controller/*.log")) + \
        sorted(the_lab.state_dir.glob("hosts/*/log/agent.log")) + \
        sorted(the_lab.state_dir.glob("storage/*.log"))
    out = []
    for path in logs:
        try:
            with open(path, "rb") as f:
                f.seek(max(path.stat().st_size - LOG_TAIL_CHARS, 0))
                out.append((str(path.relative_to(the_lab.state_dir)),
                            f.read().decode(errors="replace")))
        except OSError:
            continue
    return out


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A lab test that failed gets the tails of the lab's controller, agent and storage logs in
    its report: a failure seen only in CI can then be told apart (a hung guest, a refused push,
    a crashed service) without re-running it."""
    outcome = yield
    report = outcome.get_result()
    the_lab = _ACTIVE.get("lab")
    if report.failed and call.when == "call" and the_lab is not None:
        for name, text in _log_tails(the_lab):
            report.sections.append((f"lab log {name} (last {LOG_TAIL_CHARS} characters)",
                                    text))


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    # Not under pytest's 0700 temp root: the agents' DHCP servers drop to the dnsmasq user and
    # must traverse the state dir to re-read their hosts files.
    state = Path(tempfile.mkdtemp(prefix="kumo-lab-"))
    state.chmod(0o755)
    the_lab = Lab(
        state,
        prefix=unique_prefix(),
        listen=f"127.0.0.1:{free_port()}",
        start_services=os.environ.get("KUMO_LAB_SERVICES", "auto"),
    )
    try:
        the_lab.up(hosts=2)
        _ACTIVE["lab"] = the_lab
        yield the_lab
    finally:
        _ACTIVE.pop("lab", None)
        try:
            the_lab.down()
        finally:
            shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def ns_exec() -> Callable:
    """ns_exec(netns, *argv, check=True) -> CompletedProcess, run inside a lab namespace."""
    return ns_run


@pytest.fixture
def host_bridge() -> Iterator[Callable[[str, str, str], None]]:
    """host_bridge(netns, name, cidr): a bridge with an address in a host namespace, removed after."""
    made: list[tuple[str, str]] = []

    def make(netns: str, name: str, cidr: str) -> None:
        make_bridge(netns, name, cidr)
        made.append((netns, name))

    yield make
    for netns, name in reversed(made):
        remove_bridge(netns, name)
