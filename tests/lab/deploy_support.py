"""Support of tests/lab/test_deploy_debian_lab.py: clean Debian 12 roots the deploy role scripts
run in for real (one shared mmdebstrap base, an overlayfs upper dir per role), running commands
inside a root (its lab network namespace, a private mount namespace, pivot_root), starting a
service exactly as its installed systemd unit says, and finding and ending every process that
runs inside a root.

Nothing here touches the machine's own network namespace: the roots' processes run inside lab
namespaces; downloads go through tests/lab/registry_proxy.py.
"""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.lab import registry_proxy

REPO_ROOT = Path(__file__).resolve().parents[2]
MIRROR = "http://deb.debian.org/debian"
#: What a bare Debian 12 server has beyond minbase (the roles install everything else).
BASE_INCLUDE = ("systemd-sysv", "adduser", "iproute2", "netbase", "procps", "kmod")
#: Where the checkout is bind-mounted (read-only) inside every root.
SRC_IN_ROOT = "/srv/kumo"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# ---- the base root -------------------------------------------------------------------------------

def build_base(dest: Path, log) -> float:
    """mmdebstrap a minbase Debian 12 into `dest`; the seconds it took. A policy-rc.d keeps
    packages' maintainer scripts from starting daemons (no init runs in these roots: services
    start from their units, by the test)."""
    t0 = time.monotonic()
    cmd = ["mmdebstrap", "--mode=root", "--variant=minbase", "--quiet",
           "--include=" + ",".join(BASE_INCLUDE), "bookworm", str(dest), MIRROR]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"mmdebstrap failed: {r.stderr[-3000:]}")
    policy = dest / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\n# no init system here: services are started from their units\nexit 101\n")
    policy.chmod(0o755)
    took = time.monotonic() - t0
    log(f"mmdebstrap bookworm minbase: {took:.1f} s")
    return took


@dataclass
class Root:
    """One role's root: overlay of the shared base, upper dir of its own, mounted in the
    machine's mount namespace (only mounts; every process runs in a private one on top)."""
    base: Path
    work: Path
    netns: str
    hostname: str = "debian"
    started: list[int] = field(default_factory=list)

    @property
    def merged(self) -> Path:
        return self.work / "merged"

    def mount(self) -> None:
        for d in ("upper", "ovl-work", "merged"):
            (self.work / d).mkdir(parents=True, exist_ok=True)
        if os.path.ismount(self.merged):
            return
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={self.base},upperdir={self.work / 'upper'},"
                        f"workdir={self.work / 'ovl-work'}", str(self.merged)],
                       check=True, capture_output=True, timeout=30)
        # its own name, resolvable as Debian's installer makes it (127.0.1.1): without it every
        # getaddrinfo() of the host name (libvirtd does some) waits on a DNS the lab never answers
        self.path("/etc/hostname").write_text(self.hostname + "\n")
        hosts = self.path("/etc/hosts")
        text = hosts.read_text() if hosts.exists() else "127.0.0.1\tlocalhost\n"
        if f"\t{self.hostname}\n" not in text:
            hosts.write_text(text + f"127.0.1.1\t{self.hostname}\n")

    @property
    def kvm_node(self) -> Path:
        """This root's /dev/kvm (outside the root; bind-mounted over the machine's)."""
        return self.work / "dev-kvm"

    def udev_kvm(self) -> None:
        """Give this root a /dev/kvm as udev gives it on a Debian host: root:kvm, mode 0660
        (50-udev-default.rules), with the root's own kvm group. The machine's is root-only
        (no udev here): libvirt-qemu could not open it, and libvirtd then finds its QEMU
        capabilities stale at every call and probes QEMU again, ~4 s each (a launch took two
        minutes). The node goes over the machine's only inside the root's mount namespaces."""
        if not Path("/dev/kvm").is_char_device() or self.kvm_node.exists():
            return
        _, gid = _ids(self, "root", "kvm")
        st = os.stat("/dev/kvm")
        os.mknod(self.kvm_node, 0o660 | stat.S_IFCHR, st.st_rdev)
        os.chown(self.kvm_node, 0, gid)
        self.kvm_node.chmod(0o660)

    def umount(self) -> None:
        for _ in range(5):  # lazily: processes may still hold it for a moment
            if not os.path.ismount(self.merged):
                return
            subprocess.run(["umount", "-l", str(self.merged)], capture_output=True, timeout=30)

    def path(self, p: str) -> Path:
        return self.merged / p.lstrip("/")

    def argv(self, inner: list[str], env: dict[str, str] | None = None,
             userspec: str | None = None, cwd: str | None = None) -> list[str]:
        """A command running `inner` inside this root: its network namespace, private mount and
        UTS namespaces (/proc, /sys, /dev and the checkout, read-only; its host name),
        pivot_root, a clean environment."""
        m = shlex.quote(str(self.merged))
        src = shlex.quote(str(REPO_ROOT))
        setup = (f"mount -t proc proc {m}/proc && mount --rbind /sys {m}/sys && "
                 f"mount --rbind /dev {m}/dev && mkdir -p {m}{SRC_IN_ROOT} && "
                 f"mount --bind {src} {m}{SRC_IN_ROOT} && "
                 f"mount -o remount,bind,ro {m}{SRC_IN_ROOT}")
        if self.kvm_node.is_char_device():  # udev_kvm()
            setup += f" && mount --bind {shlex.quote(str(self.kvm_node))} {m}/dev/kvm"
        # pivot_root, not a bare chroot: the root must be the mount namespace's own root, as on
        # a machine, because libvirt enters the mount namespaces it makes for each QEMU (setns
        # resets the root to the namespace's: a chroot would be escaped there).
        setup += f" && cd {m} && pivot_root . mnt && umount -l /mnt"
        full_env = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8"}
        full_env.update(env or {})
        chroot = ["chroot"] + ([f"--userspec={userspec}"] if userspec else []) + ["/"]
        body = chroot + ["env", "-i"] + ([f"--chdir={cwd}"] if cwd else []) + \
            [f"{k}={v}" for k, v in full_env.items()] + inner
        script = setup + " && exec " + shlex.join(body)
        # a UTS namespace of its own too: each root is a host with its own name
        script = f"hostname {shlex.quote(self.hostname)} && " + script
        return ["ip", "netns", "exec", self.netns, "unshare", "-m", "-u", "--propagation",
                "private", "sh", "-c", script]

    def run(self, inner: list[str], log_path: Path, timeout: float, env=None) -> None:
        with open(log_path, "ab") as out:
            r = subprocess.run(self.argv(inner, env), stdout=out, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, timeout=timeout)
        if r.returncode != 0:
            raise AssertionError(f"{inner} in {self.netns} exited {r.returncode}:\n"
                                 f"{log_path.read_text(errors='replace')[-4000:]}")


# ---- systemd units, as systemd would run them --------------------------------------------------

def parse_unit(text: str) -> dict[str, list[str]]:
    """The [Service] section of a unit file: key -> values in order (keys may repeat)."""
    section, out = None, {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        if section == "Service" and "=" in line:
            k, v = line.split("=", 1)
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def parse_env_file(text: str) -> dict[str, str]:
    """systemd's EnvironmentFile= syntax as the deploy env files use it (KEY=VALUE lines,
    # comments, optional quotes)."""
    env = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;" or "=" not in line:
            continue
        k, v = line.split("=", 1)
        v = v.strip()
        if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
            v = v[1:-1]
        env[k.strip()] = v
    return env


def unit_command(root: Root, unit: str) -> tuple[list[str], dict[str, str], str | None, str | None]:
    """(argv, environment, user:group, working directory) of /etc/systemd/system/UNIT (or
    /lib/systemd/system/UNIT) in `root`, from ExecStart=, Environment=, EnvironmentFile=,
    User=, Group=, WorkingDirectory=; StateDirectory=/RuntimeDirectory= are created as systemd
    creates them (owned by User, with their modes)."""
    for d in ("etc/systemd/system", "lib/systemd/system", "usr/lib/systemd/system"):
        f = root.merged / d / unit
        if f.exists():
            svc = parse_unit(f.read_text())
            break
    else:
        raise AssertionError(f"{unit} is not installed in {root.merged}")
    env: dict[str, str] = {}
    for e in svc.get("Environment", []):
        for item in shlex.split(e):
            k, v = item.split("=", 1)
            env[k] = v
    for ef in svc.get("EnvironmentFile", []):
        optional = ef.startswith("-")
        p = root.path(ef.lstrip("-"))
        if p.exists():
            env.update(parse_env_file(p.read_text()))
        elif not optional:
            raise AssertionError(f"{unit}: EnvironmentFile {ef} is missing")
    exec_start = svc["ExecStart"][-1].lstrip("-@+!")
    argv = []
    for word in shlex.split(exec_start):
        # $VAR / ${VAR} expand to the variable split on whitespace (systemd.service(5))
        if word.startswith("$") and not word.startswith("${"):
            argv += env.get(word[1:], "").split()
        elif word.startswith("${") and word.endswith("}"):
            argv.append(env.get(word[2:-1], ""))
        else:
            argv.append(word)
    user = svc.get("User", ["root"])[-1]
    group = svc.get("Group", [user])[-1]
    uid, gid = _ids(root, user, group)
    for key, base, mode_key in (("StateDirectory", "/var/lib", "StateDirectoryMode"),
                                ("RuntimeDirectory", "/run", "RuntimeDirectoryMode")):
        mode = int(svc.get(mode_key, ["0755"])[-1], 8)
        for names in svc.get(key, []):
            for name in names.split():
                d = root.path(f"{base}/{name}")
                d.mkdir(parents=True, exist_ok=True)
                os.chown(d, uid, gid)
                d.chmod(mode)
    cwd = svc.get("WorkingDirectory", [None])[-1]
    return argv, env, (f"{user}:{group}" if user != "root" else None), cwd


def _ids(root: Root, user: str, group: str) -> tuple[int, int]:
    uid = gid = None
    for line in root.path("/etc/passwd").read_text().splitlines():
        f = line.split(":")
        if f[0] == user:
            uid = int(f[2])
    for line in root.path("/etc/group").read_text().splitlines():
        f = line.split(":")
        if f[0] == group:
            gid = int(f[2])
    if uid is None or gid is None:
        raise AssertionError(f"no user {user} / group {group} in {root.merged}")
    return uid, gid


def start_unit(root: Root, unit: str, log_path: Path, extra_env: dict | None = None
               ) -> subprocess.Popen:
    """Start UNIT inside `root` as its unit file says. The process is recorded in root.started
    (stopped by PID at clean-up)."""
    argv, env, userspec, cwd = unit_command(root, unit)
    env.update(extra_env or {})
    out = open(log_path, "ab")
    p = subprocess.Popen(root.argv(argv, env, userspec, cwd), stdout=out, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    out.close()
    root.started.append(p.pid)
    return p


def download_env(root: Root) -> dict[str, str]:
    """The environment of a role run that downloads: the proxy, and the machine's own CA bundle
    for pip (CI's network may re-sign TLS with a CA only the machine trusts: the same trust
    the machine's own pip has, nothing more)."""
    url = f"http://127.0.0.1:{registry_proxy.PROXY_PORT}"
    env = {"http_proxy": url, "https_proxy": url}
    bundle = Path(os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt")
    if bundle.is_file():
        inside = "/usr/local/share/kumo-ci-ca-bundle.crt"
        root.path(inside).parent.mkdir(parents=True, exist_ok=True)
        root.path(inside).write_bytes(bundle.read_bytes())
        env["PIP_CERT"] = inside
    return env


# ---- processes inside a root ----------------------------------------------------------------------

def pids_in_root(root: Root) -> list[int]:
    """Every process running inside `root`: its mount table has `root`'s overlay (our own upper
    dir) mounted on "/". Processes of the machine see that overlay too, but on root.merged."""
    upper = f"upperdir={root.work / 'upper'},"
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/mountinfo") as f:
                for line in f:
                    fields = line.split()
                    if fields[4] == "/" and upper in line:
                        found.append(int(d))
                        break
        except OSError:
            continue
    return found


def end_pids(pids: list[int], grace: float = 15.0) -> list[int]:
    """SIGTERM (then SIGKILL after `grace`) to these PIDs, guarded against PID reuse; the ones
    still running afterwards."""
    from lab import procs
    from lab.state import ProcRecord
    recs = []
    for pid in pids:
        st = procs.start_time(pid)
        if st is not None:
            recs.append(ProcRecord(name="deploy-test", pid=pid, start_time=st, argv=[], log=""))
    return [r.pid for r in procs.end(recs, timeout=grace)]


def stop_root(root: Root) -> list[int]:
    """End the services the test started in `root` first (by PID), then whatever else runs
    inside it (PostgreSQL started by the role, libvirtd's QEMUs, the agent's dnsmasq): found by
    their mount table, so only processes inside this root. The ones that would not end."""
    end_pids(list(root.started))
    left = end_pids(pids_in_root(root))
    return left + [p for p in pids_in_root(root) if p not in left]
