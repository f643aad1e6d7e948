"""The Lab: brings the all-in-one lab up (idempotently, repairing missing parts), reports its status,
and tears down everything it made. Orchestration only; the wiring is in network.py, the per-host
libvirtd in libvirtd.py, processes in procs.py, the Kumo services (controller, agents, storage
node) in services.py.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from lab import libvirtd, naming as nm, network, procs, services, state as st
from lab.errors import LabError
from lab.report import HostStatus, LabStatus, ProcStatus, StorageStatus, render_env

DEFAULT_STATE_DIR = Path("/var/lib/kumo/lab")
DEFAULT_PREFIX = "kumo"
DEFAULT_LISTEN = "127.0.0.1:8787"
# Runtime directories that `ip netns`/mount tooling may create; removed again by `down` when the lab
# created them and they are empty, so the machine is left as found.
RUNTIME_DIRS = ("/run/netns", "/run/mount")
# Files and directories of the state dir that `down` removes (everything up makes there).
STATE_ENTRIES = ("hosts", "controller", "storage", services.TOKEN_FILE, "demo.key", "lab.lock")


class Lab:
    def __init__(
        self,
        state_dir: Path | str = DEFAULT_STATE_DIR,
        prefix: str = DEFAULT_PREFIX,
        listen: str | None = None,
        python: str = sys.executable,
        start_services: str = "auto",
        bootstrap: bool = True,
    ):
        self.state_dir = Path(state_dir).absolute()
        self.prefix = nm.validate_prefix(prefix)
        # None: the address the lab's controller was started with, else DEFAULT_LISTEN.
        self.requested_listen = listen
        if listen is not None:
            services.split_listen(listen)
        # "auto": start the controller/agents/storage node whose code exists; "none": network +
        # libvirtd only; "storage": those and the storage node, with no controller to own its
        # volumes (the controller deletes volumes it does not know of: tests that drive the
        # storage node's API themselves need a lab where nothing else does).
        if start_services not in ("auto", "none", "storage"):
            raise LabError("InvalidParameterValue",
                           f"start_services must be auto|none|storage: {start_services!r}")
        self.start_services = start_services
        # After the controller is up: demo account + cached images (lab/bootstrap.py, if present).
        self.bootstrap = bootstrap
        self.python = python
        # "mtls" (default) or "token" (KUMO_LAB_AGENT_AUTH): controller <-> agent credentials.
        self.agent_auth = services.agent_auth()

    # ---------- paths
    def host_paths(self, hid: str) -> libvirtd.HostPaths:
        return libvirtd.HostPaths(self.state_dir / "hosts" / hid)

    def libvirt_uri(self, hid: str) -> str:
        return self.host_paths(hid).uri

    @property
    def listen(self) -> str:
        """The controller's HOST:PORT: as requested, else as recorded by up, else the default."""
        if self.requested_listen:
            return self.requested_listen
        try:
            s = st.load(self.state_dir)
        except LabError:
            s = None
        return s.listen if s is not None and s.listen else DEFAULT_LISTEN

    @property
    def url(self) -> str:
        host, port = services.split_listen(self.listen)
        return f"http://{host}:{port}"

    # ---------- public API
    def up(self, hosts: int) -> LabStatus:
        wanted = nm.host_ids(hosts)
        _check_prerequisites()
        with self._locked():
            s = st.load(self.state_dir) or st.LabState(prefix=self.prefix)
            if s.prefix != self.prefix:
                raise _mismatch(self.state_dir, s.prefix, self.prefix)
            self._note_runtime_dirs(s)
            for hid in [h for h in s.hosts if h not in wanted]:
                self._remove_host(s, hid)
            for name in (nm.fabric_netns(self.prefix), nm.inet_netns(self.prefix)):
                s.note_netns(name)
            self._save(s)
            network.ensure_fabric(self.prefix)
            network.ensure_inet(self.prefix)
            for hid in wanted:
                if hid not in s.hosts:
                    s.hosts.append(hid)
                s.note_netns(nm.host_netns(self.prefix, hid))
                self._save(s)
                network.ensure_host(self.prefix, hid)
            s.note_netns(nm.storage_netns(self.prefix))
            self._save(s)
            network.ensure_storage(self.prefix)
            s.note_netns(nm.ctl_netns(self.prefix))
            self._save(s)
            network.ensure_ctl(self.prefix)
            self._start_libvirtds(s, wanted)
            token = services.ensure_token(self.state_dir)
            # The storage node before the controller: the controller is told where it is.
            if self.start_services in ("auto", "storage") and services.storage_available():
                self._ensure_storage(s, token)
            if self.start_services == "auto" and services.controller_available():
                listen = self.requested_listen or s.listen or DEFAULT_LISTEN
                if s.listen and s.listen != listen and self._controller_alive(s):
                    raise LabError("LabListenMismatch", f"the lab's controller already listens on {s.listen}")
                s.listen = listen
                self._ensure_controller(s, token)
            if self.start_services == "auto" and services.agent_available():
                for hid in wanted:
                    if self.agent_auth == "mtls" and self._controller_alive(s):
                        self._join_agent(s, hid)
                    self._ensure_agent(s, hid, token)
            self._save(s)
            if self.bootstrap and self._controller_alive(s):
                self._bootstrap()
        return self.status()

    def status(self) -> LabStatus:
        s = st.load(self.state_dir)
        fab, inet = nm.fabric_netns(self.prefix), nm.inet_netns(self.prefix)
        inet_link = network.link_state(inet, nm.UPLINK)
        out = LabStatus(
            prefix=self.prefix,
            state_dir=str(self.state_dir),
            exists=s is not None,
            fabric_netns=fab,
            fabric_ok=network.link_state(fab, nm.FABRIC_BRIDGE) is not None,
            inet_netns=inet,
            inet_ok=bool(inet_link and inet_link["up"] and str(nm.inet_address()) in inet_link["addresses"]),
        )
        if s is None:
            return out
        if "controller" in s.processes:
            out.controller = self._proc_status(
                s.processes["controller"], lambda: services.controller_answers(self.prefix, self.listen)
            )
        out.hosts = [self._host_status(s, hid) for hid in s.hosts]
        if nm.storage_netns(self.prefix) in s.netns:
            out.storage = self._storage_status(s)
        return out

    def down(self) -> None:
        """Remove everything up made. Works from any half-made state, and with dead daemons.
        Returns once every process it ended (the recorded ones, everything inside the lab's
        namespaces) has exited: bounded, SIGTERM then SIGKILL (lab.procs.end)."""
        with self._locked():
            try:
                s = st.load(self.state_dir) or st.LabState(prefix=self.prefix)
            except LabError:  # unreadable state: still clean up what the names tell us
                s = st.LabState(prefix=self.prefix)
            if s.prefix != self.prefix:
                raise _mismatch(self.state_dir, s.prefix, self.prefix)
            pattern = nm.all_netns_pattern(self.prefix)
            found = [n for n in network.list_netns() if pattern.match(n)]
            hosts = set(s.hosts) | {n[len(self.prefix) + 1 :] for n in found
                                    if n.startswith(f"{self.prefix}-h") and "-kvr-" not in n}
            # Every process this down ends, taken before any is stopped: the ones the lab recorded
            # and whatever runs in its namespaces (qemu, the agents' dnsmasq, ...).
            ending = list(s.processes.values())
            if "storage" in s.processes:  # its daemon, even in a namespace whose handle is gone
                ending += procs.netns_mates(s.processes["storage"])
            for name in sorted(set(s.netns) | set(found)):
                ending += procs.netns_records(name)
            for name in [n for n in s.processes if n.startswith("agent-")] + ["controller", "storage"]:
                if name in s.processes:
                    procs.stop(s.processes.pop(name))
                    self._save(s)
            # The storage node leaves its qemu-storage-daemon running when it stops (so a restart
            # does not cut hosts off their volumes): it ends here, with the rest of the namespace.
            procs.kill_netns_processes(nm.storage_netns(self.prefix))
            network.remove_storage(self.prefix)
            s.sockets.pop("storage", None)
            procs.kill_netns_processes(nm.ctl_netns(self.prefix))
            network.remove_ctl(self.prefix)
            for hid in sorted(hosts, key=nm.host_number):
                self._remove_host(s, hid)
            for name in sorted(set(s.netns) | set(found)):
                procs.kill_netns_processes(name)
                network.remove_netns(name)
            # Each step above waited for what it stopped; this makes sure of all of them at once
            # (a daemon's children, a process a step did not know of): none of them outlives down,
            # so an immediate up, or a look at the machine, finds nothing of this lab running.
            left = procs.end(ending)
            for d in s.runtime_dirs_created:
                _remove_runtime_dir(Path(d))
            for entry in STATE_ENTRIES:
                p = self.state_dir / entry
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                elif p.exists():
                    p.unlink()
            st.remove(self.state_dir)
            _rmdir_if_empty(self.state_dir)
        if left:  # only a process stuck in the kernel (state D) survives SIGKILL
            raise LabError("LabProcessesStuck", "still exiting after SIGKILL: "
                           + ", ".join(f"{r.name} (pid {r.pid})" for r in left))

    def env(self, admin: bool = True) -> str:
        key = services.controller_dir(self.state_dir) / "admin.key" if admin else self.state_dir / "demo.key"
        return render_env(self.url, key, "admin" if admin else "demo",
                          {"KUMO_LAB_PREFIX": self.prefix, "KUMO_LAB_STATE": str(self.state_dir)})

    # ---------- steps
    def _start_libvirtds(self, s: st.LabState, wanted: list[str]) -> None:
        """Start the missing libvirtds: one first if no host has a qemu capabilities cache yet, then
        the rest in parallel from a copy of that cache (seconds instead of ~8 s of CPU each)."""
        to_start = [h for h in wanted if not self._libvirtd_alive(s, h)]
        seeds = [h for h in wanted if h not in to_start and libvirtd.has_caps_cache(self.host_paths(h))]
        if to_start and not seeds:
            first = to_start.pop(0)
            self._start_libvirtd(s, first)
            self._await_libvirtd(s, first)
            seeds = [first]
        for hid in to_start:
            libvirtd.seed_caps_cache(self.host_paths(seeds[0]), self.host_paths(hid))
            self._start_libvirtd(s, hid)
        for hid in wanted:
            self._await_libvirtd(s, hid)

    def _controller_alive(self, s: st.LabState) -> bool:
        rec = s.processes.get("controller")
        return rec is not None and procs.alive(rec)

    def _libvirtd_alive(self, s: st.LabState, hid: str) -> bool:
        rec = s.processes.get(f"libvirtd-{hid}")
        return rec is not None and procs.alive(rec)

    def _start_libvirtd(self, s: st.LabState, hid: str) -> None:
        paths = self.host_paths(hid)
        name = f"libvirtd-{hid}"
        rec = s.processes.get(name)
        if rec is not None and procs.alive(rec):
            return  # running: keep it (idempotent up); _await_libvirtd checks it answers
        libvirtd.prepare(paths)
        s.processes[name] = procs.start(name, libvirtd.command(paths), paths.log,
                                        netns=nm.host_netns(self.prefix, hid))  # fmt: skip
        s.sockets[name] = str(paths.socket)
        self._save(s)

    def _await_libvirtd(self, s: st.LabState, hid: str) -> None:
        paths = self.host_paths(hid)
        rec = s.processes[f"libvirtd-{hid}"]
        libvirtd.wait_ready(paths.uri, lambda: procs.alive(rec), paths.log)
        libvirtd.remove_default_network(paths.uri)

    def _ensure_controller(self, s: st.LabState, token: str) -> None:
        """The controller runs inside the ctl namespace (agents reach it across the fabric) and
        serves users on a socket bound here, in the root namespace's loopback, and inherited:
        nothing links the root namespace to the lab. One left in a ctl namespace that was
        deleted and re-created serves no agent: it is replaced."""
        ns = nm.ctl_netns(self.prefix)
        rec = s.processes.get("controller")
        if rec is not None and procs.alive(rec) and rec.pid not in procs.netns_pids(ns):
            procs.stop(s.processes.pop("controller"))
            self._save(s)
            rec = None
        log = services.controller_dir(self.state_dir) / "controller.log"
        if rec is None or not procs.alive(rec):
            services.controller_dir(self.state_dir).mkdir(parents=True, exist_ok=True)
            api = services.bind_listen(s.listen)
            try:
                env = services.controller_env(
                    self.state_dir, s.listen, token,
                    services.storage_url(self.state_dir) if "storage" in s.processes else None,
                    auth=self.agent_auth, listen_fd=api.fileno())
                rec = procs.start("controller", services.controller_argv(self.python), log,
                                  env=env, netns=ns, cwd=services.REPO_ROOT, share_mounts=True,
                                  pass_fds=(api.fileno(),))  # fmt: skip
            finally:
                api.close()  # the controller holds its own copy
            s.processes["controller"] = rec
            s.sockets.pop("controller", None)  # labs before issue 14: its unix socket
            self._save(s)
        services.wait_until(lambda: services.controller_answers(self.prefix, s.listen),
                            lambda: procs.alive(rec), "controller", log)  # fmt: skip

    def _ensure_agent(self, s: st.LabState, hid: str, token: str) -> None:
        name = f"agent-{hid}"
        rec = s.processes.get(name)
        log = self.host_paths(hid).base / "log" / "agent.log"
        if rec is None or not procs.alive(rec):
            env = services.agent_env(self.state_dir, hid, token, self.libvirt_uri(hid),
                                      self.prefix, auth=self.agent_auth)
            Path(env["KUMO_AGENT_STATE_DIR"]).mkdir(parents=True, exist_ok=True)
            rec = procs.start(name, services.agent_argv(self.python), log, env=env,
                              netns=nm.host_netns(self.prefix, hid), cwd=services.REPO_ROOT,
                              share_mounts=True)  # fmt: skip
            s.processes[name] = rec
            s.sockets[name] = str(services.agent_socket(self.state_dir, hid))
            self._save(s)
        services.wait_until(lambda: services.agent_answers(self.state_dir, self.prefix, hid),
                            lambda: procs.alive(rec), f"agent {hid}", log)  # fmt: skip

    def _ensure_storage(self, s: st.LabState, token: str) -> None:
        """The storage node runs (inside its namespace) and answers on its socket. One left in a
        namespace that was deleted and re-created serves nobody: it is replaced (the new one
        moves the qemu-storage-daemon into place too: agent/supervisor.py's in_place)."""
        ns = nm.storage_netns(self.prefix)
        rec = s.processes.get("storage")
        log = services.storage_dir(self.state_dir) / "storage.log"
        if rec is not None and procs.alive(rec) and rec.pid not in procs.netns_pids(ns):
            # Its qemu-storage-daemon is in that old namespace too (the node leaves it running on
            # exit): both end, and the new node starts a daemon in place.
            procs.end(procs.netns_mates(rec) or [rec])
        if rec is None or not procs.alive(rec):
            services.storage_dir(self.state_dir).mkdir(parents=True, exist_ok=True)
            tls_dir = services.storage_dir(self.state_dir) / "tls"
            if libvirtd.nbd_tls_enabled() and not (tls_dir / "server-cert.pem").exists():
                # Per-host NBD over TLS (docs/security.md "Storage access"): the node's server
                # certificate from the lab controller's cloud CA (made now if the controller
                # has not run yet: it loads the same files), issued once, as an admin would.
                from controller.services.cloud_ca import storage_node_files

                storage_node_files(services.controller_dir(self.state_dir), "sn1",
                                   [str(nm.STORAGE_ADDR.ip)], tls_dir)
            rec = procs.start("storage", services.storage_argv(self.python), log,
                              env=services.storage_env(self.state_dir, token), netns=ns,
                              cwd=services.REPO_ROOT)  # fmt: skip
            s.processes["storage"] = rec
            s.sockets["storage"] = str(services.storage_socket(self.state_dir))
            self._save(s)
        services.wait_until(lambda: services.storage_answers(self.state_dir, self.prefix),
                            lambda: procs.alive(rec), "storage node", log)  # fmt: skip

    def _join_agent(self, s: st.LabState, hid: str) -> None:
        """The host's certificate by the production join (lab/services.py join_agent); an
        agent running with an older identity is restarted to pick the new one up."""
        from lab.bootstrap import _admin_key

        key = _admin_key(services.controller_dir(self.state_dir))
        if services.join_agent(self.state_dir, hid, self.url, key):
            rec = s.processes.get(f"agent-{hid}")
            if rec is not None and procs.alive(rec):
                procs.stop(s.processes.pop(f"agent-{hid}"))
                self._save(s)

    def _bootstrap(self) -> None:
        try:
            from lab.bootstrap import bootstrap
        except ImportError:  # not written yet, or its dependencies are missing
            return
        bootstrap(self.state_dir, services.controller_dir(self.state_dir), self.url,
                  log=lambda msg: print(msg, file=sys.stderr))  # fmt: skip

    def _remove_host(self, s: st.LabState, hid: str) -> None:
        """Agent, domains, libvirtd, leftover processes, links, namespace, files of one host."""
        if f"agent-{hid}" in s.processes:
            procs.stop(s.processes.pop(f"agent-{hid}"))
        rec = s.processes.get(f"libvirtd-{hid}")
        if rec is not None:
            if procs.alive(rec):
                libvirtd.purge_domains(self.libvirt_uri(hid))
            procs.stop(rec)
            del s.processes[f"libvirtd-{hid}"]
        s.sockets.pop(f"libvirtd-{hid}", None)
        s.sockets.pop(f"agent-{hid}", None)
        ns = nm.host_netns(self.prefix, hid)
        procs.kill_netns_processes(ns)  # e.g. qemu of a libvirtd that died before down
        network.remove_host(self.prefix, hid)
        if ns in s.netns:
            s.netns.remove(ns)
        if hid in s.hosts:
            s.hosts.remove(hid)
        shutil.rmtree(self.host_paths(hid).base, ignore_errors=True)
        self._save(s)

    # ---------- helpers
    def _host_status(self, s: st.LabState, hid: str) -> HostStatus:
        ns = nm.host_netns(self.prefix, hid)
        uplink = network.link_state(ns, nm.UPLINK)
        addr = str(nm.host_address(hid))
        uri = self.libvirt_uri(hid)
        rec = s.processes.get(f"libvirtd-{hid}")
        if rec is None:
            lv = ProcStatus(f"libvirtd-{hid}", None, False, False)
        else:
            lv = self._proc_status(rec, lambda: libvirtd.answers(uri))
        agent = s.processes.get(f"agent-{hid}")
        return HostStatus(
            id=hid,
            netns=ns,
            netns_exists=network.exists(ns),
            address=addr,
            uplink_up=bool(uplink and uplink["up"] and addr in uplink["addresses"]),
            libvirt_uri=uri,
            libvirtd=lv,
            agent=self._proc_status(agent, lambda: services.agent_answers(self.state_dir, self.prefix, hid))
            if agent else None,
        )

    def _storage_status(self, s: st.LabState) -> StorageStatus:
        ns = nm.storage_netns(self.prefix)
        uplink = network.link_state(ns, nm.UPLINK)
        addr = str(nm.STORAGE_ADDR)
        rec = s.processes.get("storage")
        return StorageStatus(
            netns=ns,
            netns_exists=network.exists(ns),
            address=addr,
            uplink_up=bool(uplink and uplink["up"] and addr in uplink["addresses"]),
            nbd_port=nm.STORAGE_NBD_PORT,
            socket=str(services.storage_socket(self.state_dir)),
            service=self._proc_status(rec, lambda: services.storage_answers(self.state_dir)) if rec else None,
        )

    def _proc_status(self, rec: st.ProcRecord, answers) -> ProcStatus:
        is_alive = procs.alive(rec)
        return ProcStatus(rec.name, rec.pid, is_alive, bool(is_alive and answers()))

    def _save(self, s: st.LabState) -> None:
        st.save(self.state_dir, s)

    def _note_runtime_dirs(self, s: st.LabState) -> None:
        if not s.netns:  # first up (or after a clean down): remember what did not exist yet
            s.runtime_dirs_created = [d for d in RUNTIME_DIRS if not os.path.exists(d)]

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.state_dir / "lab.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _mismatch(state_dir: Path, have: str, want: str) -> LabError:
    return LabError("LabPrefixMismatch", f"{state_dir} holds lab {have!r}, not {want!r}")


def _check_prerequisites() -> None:
    if os.geteuid() != 0:
        raise LabError("NotRoot", "the lab needs root (network namespaces, mounts, libvirtd)")
    for tool in ("ip", "unshare", "mount"):
        if shutil.which(tool) is None:
            raise LabError("ToolMissing", f"{tool} not found in PATH")
    if not os.access("/usr/sbin/libvirtd", os.X_OK):
        raise LabError("LibvirtMissing", "/usr/sbin/libvirtd not found: install libvirt-daemon-system")


def _remove_runtime_dir(p: Path) -> None:
    """Undo a runtime dir the lab's first up created, if nothing else uses it now. /run/netns is
    bind-mounted onto itself by `ip netns`/pyroute2 (to make it a shared mount): unmount that too."""
    try:
        if any(p.iterdir()):
            return
    except FileNotFoundError:
        return
    if os.path.ismount(p):
        subprocess.run(["umount", str(p)], check=False, capture_output=True)
    _rmdir_if_empty(p)


def _rmdir_if_empty(p: Path) -> None:
    try:
        p.rmdir()
    except OSError:
        pass
