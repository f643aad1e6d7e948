"""The lab's long-running Kumo processes: the controller (in its own namespace on the fabric:
agents reach it at CTL_ADDR:CTL_AGENT_PORT, users at 127.0.0.1 through a socket the lab binds in
the root namespace and hands over), one agent per host (inside its host namespace: its API on the
host's fabric address, plus a host-local unix socket for local administration) and the storage
node (inside the storage namespace, API on a unix socket). Controller <-> agent traffic is the
production transport: TLS over TCP across the fabric, client certificates both ways (mtls; plain
HTTP with the shared token in the token mode). Pure builders of their commands and environments,
the per-lab agent token, and the readiness checks `up` waits on.

They are only started when their code exists (`controller/__main__.py`, `agent/__main__.py`,
`agent/storage_node/__main__.py`), so the lab is usable while those packages are still being written.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from pathlib import Path
from typing import Callable

from lab import naming as nm, network
from lab.errors import LabError

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKEN_FILE = "agent.token"


def controller_available(repo_root: Path = REPO_ROOT) -> bool:
    return (repo_root / "controller" / "__main__.py").is_file()


def agent_available(repo_root: Path = REPO_ROOT) -> bool:
    return (repo_root / "agent" / "__main__.py").is_file()


def storage_available(repo_root: Path = REPO_ROOT) -> bool:
    return (repo_root / "agent" / "storage_node" / "__main__.py").is_file()


def controller_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "controller"


def agent_socket(state_dir: Path, hid: str) -> Path:
    """Host `hid`'s agent's host-local unix socket (local administration: tests and lab tools in
    the root namespace; the same API and TLS as its fabric listener)."""
    return Path(state_dir) / "hosts" / hid / "agent.sock"


def _scheme(auth: str) -> str:
    return "https" if auth == "mtls" else "http"


def controller_agent_url(auth: str = "mtls") -> str:
    """The controller's agent-facing URL on the fabric (what agents dial)."""
    return f"{_scheme(auth)}://{nm.controller_agent_listen()}"


def agent_url(hid: str, auth: str = "mtls") -> str:
    """Host `hid`'s agent API on the fabric (what the controller dials, learnt by heartbeat)."""
    return f"{_scheme(auth)}://{nm.agent_listen(hid)}"


def storage_dir(state_dir: Path) -> Path:
    """The storage node's state: volumes/, exports.json, the daemon's QMP socket and log."""
    return Path(state_dir) / "storage"


def storage_socket(state_dir: Path) -> Path:
    return storage_dir(state_dir) / "storage.sock"


def storage_url(state_dir: Path) -> str:
    """How tests and tools in the root namespace reach the storage node's API
    (agent/contract/transport.py): its node-local socket (the same API and authentication)."""
    return f"unix:{storage_socket(state_dir)}"


#: The storage node's API port on its fabric address (agent/storage_node/settings.py's default).
STORAGE_API_PORT = 8789


def storage_listen() -> str:
    """HOST:PORT of the storage node's API on the fabric, over mutual TLS (KUMO_LAB_STORAGE_TLS)."""
    return f"{nm.STORAGE_ADDR.ip}:{STORAGE_API_PORT}"


def storage_controller_url(state_dir: Path) -> str:
    """What the controller dials: the node's fabric address over mutual TLS, as across machines
    (docs/security.md "Storage access"); with KUMO_LAB_STORAGE_TLS=0 its unix socket and the
    shared token."""
    from lab import libvirtd

    return f"https://{storage_listen()}" if libvirtd.nbd_tls_enabled() else storage_url(state_dir)


def ensure_token(state_dir: Path) -> str:
    """The shared secret agents present to the controller: generated once per lab, file mode 0600."""
    p = Path(state_dir) / TOKEN_FILE
    try:
        tok = p.read_text().strip()
        if tok:
            return tok
    except FileNotFoundError:
        pass
    p.parent.mkdir(parents=True, exist_ok=True)
    tok = secrets.token_urlsafe(32)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(tok + "\n")
    return tok


def agent_auth() -> str:
    """How the lab's controller and agents authenticate each other: "mtls" (the default: the
    production path, docs/security.md) or "token" (KUMO_LAB_AGENT_AUTH=token: the shared
    token, the old path)."""
    mode = os.environ.get("KUMO_LAB_AGENT_AUTH", "mtls")
    if mode not in ("mtls", "token"):
        raise LabError("InvalidAgentAuth", f"KUMO_LAB_AGENT_AUTH must be mtls or token: {mode!r}")
    return mode


def agent_state_dir(state_dir: Path, hid: str) -> Path:
    return Path(state_dir) / "hosts" / hid / "agent"


def controller_env(state_dir: Path, listen: str, token: str,
                   storage: str | None = None, auth: str = "mtls",
                   listen_fd: int | None = None) -> dict[str, str]:
    """`storage`: set when the lab runs a storage node; KUMO_STORAGE_URL is then
    storage_controller_url (mutual TLS across the fabric, or the token on its socket). `listen_fd`: the users' API socket
    (`listen`, bound by the lab in the root namespace) the controller inherits and serves."""
    env = {
        "KUMO_STATE_DIR": str(controller_dir(state_dir)),
        "KUMO_LISTEN": listen,
        # Agents' listener on the fabric: TLS requiring a host certificate (mtls).
        "KUMO_AGENT_LISTEN": nm.controller_agent_listen(),
        "KUMO_AGENT_FACING_URL": controller_agent_url(auth),
        "KUMO_AGENT_TOKEN": token,
        "KUMO_AGENT_AUTH": auth,
        "KUMO_PUBLIC_POOL": str(nm.PUBLIC_POOL),
    }
    if listen_fd is not None:
        env["KUMO_LISTEN_FD"] = str(listen_fd)
    if storage:
        from lab import libvirtd  # the node's API is mutual TLS on the fabric when its NBD is

        env["KUMO_STORAGE_URL"] = storage_controller_url(state_dir)
        if libvirtd.nbd_tls_enabled():
            env["KUMO_STORAGE_MTLS"] = "true"
    return env


def controller_argv(python: str) -> list[str]:
    return [python, "-m", "controller"]


def agent_env(state_dir: Path, hid: str, token: str, libvirt_uri: str,
              prefix: str, auth: str = "mtls") -> dict[str, str]:
    """With auth "mtls" the agent holds no shared secret: its certificate is in its state dir
    (join_agent put it there before the agent starts)."""
    env = {
        "KUMO_AGENT_HOST_ID": hid,
        "KUMO_AGENT_STATE_DIR": str(agent_state_dir(state_dir, hid)),
        # The API on the host's fabric address (what the controller dials) and a host-local
        # unix socket for local administration; the controller across the fabric.
        "KUMO_AGENT_LISTEN": nm.agent_listen(hid),
        "KUMO_AGENT_ADVERTISE_URL": agent_url(hid, auth),
        "KUMO_AGENT_LOCAL_SOCKET": str(agent_socket(state_dir, hid)),
        "KUMO_AGENT_CONTROLLER_URL": controller_agent_url(auth),
        "KUMO_AGENT_AUTH": auth,
        "KUMO_AGENT_LIBVIRT_URI": libvirt_uri,
        # The VPC dataplane: the host's namespace (it also tags the VPC router namespaces,
        # whose names are machine-wide) and its underlay device on the fabric.
        "KUMO_AGENT_NETNS": nm.host_netns(prefix, hid),
        "KUMO_AGENT_UNDERLAY_DEV": nm.UPLINK,
    }
    if auth == "token":
        env["KUMO_AGENT_TOKEN"] = token
    return env


def join_agent(state_dir: Path, hid: str, url: str, admin_key: str) -> bool:
    """Give host `hid`'s agent its certificate the production way (docs/security.md): an admin
    join token from the controller's API at `url`, exchanged by the agent's own join code
    (agent/identity.py: the key is made in the agent's state dir and never sent). Skipped
    when the agent already holds a usable certificate from this controller's CA. True when
    it joined now."""
    from agent.contract.transport import client
    from agent.identity import AgentIdentity

    ident = AgentIdentity(agent_state_dir(state_dir, hid), hid)
    ca = controller_dir(state_dir) / "cloud-ca.crt"
    if ident.usable() and ca.exists() and ident.ca_path.read_bytes() == ca.read_bytes():
        return False
    with client(url, admin_key, timeout=30) as api:
        r = api.post("/v1/hosts/join-tokens", json={"host_id": hid, "ttl_s": 600})
        if r.status_code >= 400:
            raise LabError("LabJoinFailed", f"join token for {hid}: HTTP {r.status_code} {r.text}")
        token = r.json()["token"]
    ident.join(url, token)
    return True


def controller_tls_client(state_dir: Path, url: str, timeout: float = 10.0):
    """An httpx client to `url` (an agent's) presenting the lab controller's own certificate:
    how tests call an agent's API directly in an mtls lab."""
    from agent.contract import tls, transport

    cdir = controller_dir(state_dir)
    ctx = tls.client_context((cdir / "cloud-ca.crt").read_bytes(),
                             str(cdir / "controller-tls.pem"))
    return transport.client(url, timeout=timeout, tls=ctx)


def agent_client(state_dir: Path, hid: str, timeout: float = 10.0):
    """A client of host `hid`'s agent API as the controller: its certificate (mtls lab) or
    the shared token (token lab)."""
    from agent.contract.transport import client

    url = f"unix:{agent_socket(state_dir, hid)}"
    tok = Path(state_dir) / TOKEN_FILE
    if (controller_dir(state_dir) / "controller-tls.pem").exists() and agent_auth() == "mtls":
        return controller_tls_client(state_dir, url, timeout)
    return client(url, tok.read_text().strip(), timeout=timeout)


def agent_argv(python: str) -> list[str]:
    return [python, "-m", "agent"]


def storage_env(state_dir: Path, token: str) -> dict[str, str]:
    """The storage node runs inside the storage namespace: its NBD server listens on the node's
    fabric address, which is also what hosts are told to dial. With TLS (the default) its API
    too, over mutual TLS (what the controller dials), plus its node-local socket for tools in
    the root namespace; with KUMO_LAB_STORAGE_TLS=0 only that socket, with the token."""
    from lab import libvirtd  # qemu.conf's nbd_tls and the node's TLS go together

    tls = libvirtd.nbd_tls_enabled()
    return {
        "KUMO_STORAGE_NODE_ID": "sn1",
        "KUMO_STORAGE_STATE_DIR": str(storage_dir(state_dir)),
        "KUMO_STORAGE_LISTEN": storage_listen() if tls else storage_url(state_dir),
        **({"KUMO_STORAGE_LOCAL_SOCKET": str(storage_socket(state_dir))} if tls else {}),
        "KUMO_STORAGE_TOKEN": token,
        "KUMO_STORAGE_NBD_HOST": str(nm.STORAGE_ADDR.ip),
        "KUMO_STORAGE_NBD_PORT": str(nm.STORAGE_NBD_PORT),
        # Per-host NBD over TLS and the API over mutual TLS (KUMO_LAB_STORAGE_TLS=1):
        # lab/core.py _ensure_storage issues the node's certificate from the lab controller's
        # cloud CA into this directory.
        **({"KUMO_STORAGE_NBD_TLS_DIR": str(storage_dir(state_dir) / "tls"),
            "KUMO_STORAGE_API_TLS_DIR": str(storage_dir(state_dir) / "tls")}
           if libvirtd.nbd_tls_enabled() else {}),
    }


def storage_rbd_env(state_dir: Path, ceph_conf: Path, pool: str,
                    mon_port: int = 6789, *, client_id: str | None = None,
                    keyring: Path | None = None) -> dict[str, str]:
    """What turns storage_env() into a node on Ceph RBD (agent/storage_node/settings.py): a Ceph
    cluster in the storage namespace whose monitor listens on the node's fabric address (hosts'
    QEMUs dial it, then the OSD, directly). Its own state dir (its exports.json is not the NBD
    node's), the same API socket: the controller's URL does not change. With `client_id` and
    `keyring` (a cephx cluster, ceph_support auth="cephx", and the node's own user with
    rbd_cephx.node_caps): per-host cephx users (docs/security.md "Storage access")."""
    env = {
        "KUMO_STORAGE_BACKEND": "rbd",
        "KUMO_STORAGE_STATE_DIR": str(storage_dir(state_dir) / "rbd"),
        "KUMO_STORAGE_CEPH_CONF": str(ceph_conf),
        "KUMO_STORAGE_RBD_POOL": pool,
        "KUMO_STORAGE_RBD_MON_HOSTS": f"{nm.STORAGE_ADDR.ip}:{mon_port}",
    }
    if (client_id is None) != (keyring is None):
        raise LabError("InvalidRbdAuth", "cephx needs both the node's client id and keyring")
    if client_id is not None:
        env.update({"KUMO_STORAGE_RBD_AUTH": "cephx", "KUMO_STORAGE_RBD_CLIENT_ID": client_id,
                    "KUMO_STORAGE_RBD_KEYRING": str(keyring)})
    return env


def storage_argv(python: str) -> list[str]:
    return [python, "-m", "agent.storage_node"]


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise LabError("InvalidListen", f"listen address must be HOST:PORT: {listen!r}")
    return host, int(port)


def _unix_answers(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(0.5)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _tcp_answers(listen: str) -> bool:
    host, port = split_listen(listen)
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def bind_listen(listen: str) -> socket.socket:
    """The users' API socket, bound and listening in this process's namespace (the root one):
    the controller, running in its lab namespace, inherits it (a socket keeps the namespace it
    was created in), so users reach it at 127.0.0.1 while nothing links the root namespace to
    the lab."""
    host, port = split_listen(listen)
    s = socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET,
                      socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host.strip("[]"), port))
        s.listen(2048)
    except OSError as e:
        s.close()
        raise LabError("LabListenFailed", f"cannot listen on {listen}: {e}") from e
    return s


def controller_answers(prefix: str, listen: str) -> bool:
    """Both of the controller's listeners accept: the users' API (root namespace) and the
    agents' one, as seen from the controller's namespace on the fabric."""
    host, port = split_listen(nm.controller_agent_listen())
    return _tcp_answers(listen) and network.tcp_answers(nm.ctl_netns(prefix), host, port)


def agent_answers(state_dir: Path, prefix: str, hid: str) -> bool:
    """Both of the agent's listeners accept: its host-local socket, and its fabric address as
    seen from the controller's namespace (the path the controller's calls take)."""
    host, port = split_listen(nm.agent_listen(hid))
    return (_unix_answers(agent_socket(state_dir, hid))
            and network.tcp_answers(nm.ctl_netns(prefix), host, port))


def storage_answers(state_dir: Path, prefix: str | None = None) -> bool:
    """Its node-local socket accepts; with `prefix` and TLS also its fabric listener, as seen
    from inside the storage namespace (on its fabric address, the one the controller dials)."""
    from lab import libvirtd

    if not _unix_answers(storage_socket(state_dir)):
        return False
    if prefix is None or not libvirtd.nbd_tls_enabled():
        return True
    host, port = split_listen(storage_listen())
    return network.tcp_answers(nm.storage_netns(prefix), host, port)


def wait_until(check: Callable[[], bool], is_alive: Callable[[], bool], what: str, log: Path,
               timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if not is_alive():
            raise LabError("LabServiceDied", f"{what} exited during start; see {log}:\n{_tail(log)}")
        time.sleep(0.1)
    raise LabError("LabServiceTimeout", f"{what} not answering after {timeout}s; see {log}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""
