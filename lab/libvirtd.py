"""One libvirtd per lab host: its private directories and config files, the command that starts it
inside the host's network namespace and a private mount namespace, readiness, and domain cleanup.

Layout under `<state>/hosts/hN/`:
  run/libvirt-sock      the client socket (unix_sock_dir = run/); URI qemu:///system?socket=...
  run/libvirtd.pid      libvirtd's own pid file (the default /run/libvirtd.pid would be shared)
  libvirt/etc           bind-mounted over /etc/libvirt   (our libvirtd.conf + qemu.conf, no networks)
  libvirt/run           bind-mounted over /run/libvirt   (domain status, monitor sockets)
  libvirt/lib           bind-mounted over /var/lib/libvirt
  libvirt/cache         bind-mounted over /var/cache/libvirt (qemu capabilities cache)
  libvirt/log           bind-mounted over /var/log/libvirt   (per-domain qemu logs)
  log/libvirtd.log      libvirtd's stdout/stderr

Why a private /etc/libvirt: the distribution's /etc/libvirt/qemu/networks holds libvirt's `default`
NAT network; with our own empty config directory no libvirtd of the lab can ever see, autostart or
define it. /run is first covered by a private tmpfs (inside the private mount namespace only), because
/run/libvirt may not exist on the machine and creating it there would leave a file behind.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from lab.errors import LabError

# Bind mounts (state sub-directory -> system path) that give each libvirtd its own world.
BIND_DIRS: tuple[tuple[str, str], ...] = (
    ("etc", "/etc/libvirt"),
    ("run", "/run/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("cache", "/var/cache/libvirt"),
    ("log", "/var/log/libvirt"),
)

# Constant script, never templated: its arguments are pairs `SRC DST` ended by `--`, then the daemon's
# argv. It runs in a fresh private mount namespace, so none of these mounts is visible outside.
MOUNT_AND_EXEC = r"""set -e
mount -t tmpfs -o mode=0755 kumo-lab-run /run
mkdir -p /run/libvirt /run/lock
while [ "$1" != "--" ]; do mount --bind "$1" "$2"; shift 2; done
shift
exec "$@"
"""

# qemu.conf for lab hosts, and why:
# - stdio_handler = "file": qemu's stdout/stderr go straight to the log file; the default ("logd")
#   needs a virtlogd socket under /run/libvirt, i.e. one more daemon per host.
# - user/group root, dynamic_ownership 0, remember_owner 0, security_driver none: the lab's files
#   (base images in the shared image cache, instance dirs and console logs under a state directory
#   that may be a 0700 pytest tmp dir) must be readable/writable by qemu without libvirt chowning
#   them. With DAC labelling, several libvirtds sharing one base image would chown/restore it under
#   each other, and unprivileged qemu could not traverse 0700 parents. There is no AppArmor/SELinux
#   confinement to apply to TCG guests in the lab anyway.
# - namespaces = []: no per-domain private /dev mount namespace nested inside our private one.
QEMU_CONF = {
    "stdio_handler": "file",
    "user": "root",
    "group": "root",
    "dynamic_ownership": 0,
    "remember_owner": 0,
    "security_driver": "none",
    "namespaces": [],
}


def nbd_tls_enabled() -> bool:
    """Whether the lab's storage node serves NBD over TLS, per host (KUMO_LAB_STORAGE_TLS=1;
    docs/security.md "Storage access"): then every host's qemu.conf says nbd_tls = 1, so its
    QEMUs dial NBD with the host's own certificate (the agent keeps it in nbd_tls_dir), and the
    node's API takes only the controller's certificate. On by default, so every lab volume
    test goes the production storage path; KUMO_LAB_STORAGE_TLS=0 is the explicit opt-out
    (plain NBD, the API with the shared token)."""
    mode = os.environ.get("KUMO_LAB_STORAGE_TLS", "1")
    if mode not in ("0", "1"):
        raise LabError("InvalidStorageTls", f"KUMO_LAB_STORAGE_TLS must be 0 or 1: {mode!r}")
    return mode == "1"


def qemu_conf(paths: "HostPaths") -> dict[str, object]:
    """QEMU_CONF plus where the host's NBD client certificate is (the agent's identity,
    agent/identity.py nbd_dir) and whether NBD disks use TLS by default."""
    return {**QEMU_CONF, "nbd_tls": nbd_tls_enabled(),
            "nbd_tls_x509_cert_dir": str(paths.nbd_tls_dir)}


@dataclass(frozen=True)
class HostPaths:
    base: Path

    @property
    def sock_dir(self) -> Path:
        return self.base / "run"

    @property
    def socket(self) -> Path:
        return self.sock_dir / "libvirt-sock"

    @property
    def pid_file(self) -> Path:
        return self.sock_dir / "libvirtd.pid"

    @property
    def libvirt_root(self) -> Path:
        return self.base / "libvirt"

    @property
    def conf(self) -> Path:
        return self.libvirt_root / "etc" / "libvirtd.conf"

    @property
    def nbd_tls_dir(self) -> Path:
        """The agent's identity in QEMU's names (agent state dir = base/agent, as
        lab/services.py agent_state_dir; agent/identity.py writes it)."""
        return self.base / "agent" / "tls" / "nbd"

    @property
    def log(self) -> Path:
        return self.base / "log" / "libvirtd.log"

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.socket}"


def _conf_value(v: object) -> str:
    """Render one value of libvirt's config syntax; strings that could break out are refused."""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        if any(c in v for c in '"\\\n\r'):
            raise LabError("InvalidLabPath", f"unsupported character in config value: {v!r}")
        return f'"{v}"'
    if isinstance(v, list):
        return "[" + ", ".join(_conf_value(x) for x in v) + "]"
    raise TypeError(v)


def render_conf(values: dict[str, object]) -> str:
    lines = ["# Written by kumo lab; regenerated by `lab up`."]
    lines += [f"{k} = {_conf_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def libvirtd_conf(paths: HostPaths) -> dict[str, object]:
    return {
        "unix_sock_dir": str(paths.sock_dir),
        # Only root may use the sockets; no polkit (there is no system bus in the lab).
        "unix_sock_rw_perms": "0700",
        "unix_sock_ro_perms": "0700",
        "unix_sock_admin_perms": "0700",
        "auth_unix_rw": "none",
        "auth_unix_ro": "none",
        "listen_tls": 0,
        "listen_tcp": 0,
        "log_outputs": "3:stderr",
    }


def prepare(paths: HostPaths) -> None:
    """Create the host's directories and (re)write its config files."""
    if len(str(paths.socket)) > 107:
        raise LabError("LabPathTooLong", f"unix socket path too long (max 107): {paths.socket}")
    for sub, target in BIND_DIRS:
        (paths.libvirt_root / sub).mkdir(parents=True, exist_ok=True)
        if target != "/run/libvirt" and not Path(target).is_dir():
            raise LabError("LibvirtMissing", f"{target} does not exist: is libvirt-daemon-system installed?")
    for d in (paths.sock_dir, paths.log.parent, paths.libvirt_root / "etc" / "qemu" / "networks"):
        d.mkdir(parents=True, exist_ok=True)
    paths.sock_dir.chmod(0o700)
    # libvirtd refuses to start with nbd_tls on and the directory missing; the agent fills it
    # once it has joined (before that no volume can be attached to it anyway).
    paths.nbd_tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    paths.conf.write_text(render_conf(libvirtd_conf(paths)))
    (paths.conf.parent / "qemu.conf").write_text(render_conf(qemu_conf(paths)))


def command(paths: HostPaths, libvirtd: str = "/usr/sbin/libvirtd") -> list[str]:
    """argv (to run under `ip netns exec`): unshare -> sh (mounts) -> exec libvirtd in the foreground,
    so the PID of the started process is libvirtd's."""
    binds: list[str] = []
    for sub, target in BIND_DIRS:
        binds += [str(paths.libvirt_root / sub), target]
    return [
        "unshare", "-m", "--propagation", "private",
        "sh", "-c", MOUNT_AND_EXEC, "kumo-lab-libvirtd", *binds, "--",
        libvirtd, "--config", str(paths.conf), "--pid-file", str(paths.pid_file),
    ]  # fmt: skip


def caps_dir(paths: HostPaths) -> Path:
    return paths.libvirt_root / "cache" / "qemu" / "capabilities"


def has_caps_cache(paths: HostPaths) -> bool:
    d = caps_dir(paths)
    return d.is_dir() and any(d.glob("*.xml"))


def seed_caps_cache(src: HostPaths, dst: HostPaths) -> None:
    """Copy one host's qemu capabilities cache to another before its libvirtd starts: probing the
    qemu binaries costs a libvirtd ~8 s of CPU, and all lab hosts run the same binaries. libvirt
    re-validates every entry (binary and daemon ctimes, kernel, user) and re-probes if stale."""
    if has_caps_cache(dst) or not has_caps_cache(src):
        return
    caps_dir(dst).mkdir(parents=True, exist_ok=True)
    for f in caps_dir(src).glob("*.xml"):
        shutil.copy2(f, caps_dir(dst) / f.name)


def _libvirt():
    import libvirt

    # Without this, libvirt-python prints every failed probe to stderr.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def answers(uri: str) -> bool:
    """True when a libvirtd answers getCapabilities on this URI."""
    libvirt = _libvirt()
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError:
        return False
    try:
        return bool(conn.getCapabilities())
    except libvirt.libvirtError:
        return False
    finally:
        conn.close()


def wait_ready(uri: str, is_alive, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if answers(uri):
            return
        if not is_alive():
            raise LabError("LibvirtdDied", f"libvirtd exited during start; see {log}:\n{_tail(log)}")
        time.sleep(0.1)
    raise LabError("LibvirtdTimeout", f"libvirtd did not answer on {uri} in {timeout}s; see {log}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def remove_default_network(uri: str) -> bool:
    """Destroy and undefine libvirt's `default` network if it ever shows up. True if it did."""
    libvirt = _libvirt()
    conn = libvirt.open(uri)
    try:
        for net in conn.listAllNetworks():
            if net.name() == "default":
                if net.isActive():
                    net.destroy()
                net.undefine()
                return True
        return False
    finally:
        conn.close()


def purge_domains(uri: str) -> list[str]:
    """Destroy and undefine every domain on this libvirtd (the lab owns all of them)."""
    libvirt = _libvirt()
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError:
        return []
    flags = (
        libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
        | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
        | getattr(libvirt, "VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA", 0)
    )
    gone = []
    try:
        for dom in conn.listAllDomains():
            name = dom.name()
            try:
                if dom.isActive():
                    dom.destroy()
            except libvirt.libvirtError:
                pass  # it may stop by itself meanwhile; undefine below is what matters
            try:
                dom.undefineFlags(flags)
            except libvirt.libvirtError:
                try:
                    dom.undefine()
                except libvirt.libvirtError:
                    continue
            gone.append(name)
    finally:
        conn.close()
    return gone
