"""The one loader of every nftables table the agent owns: backends and the in-place load policy.

Owns how a rendered transaction reaches the kernel, for the firewall's ``kumo`` tables
(agent/firewall/apply.py) and each VPC router's ``ip kumo_nat`` table (agent/network/nat.py):

- Backends, both with ``load(document, check=False)`` and ``list_ruleset()``: ``Nft`` runs the nft
  CLI (argument lists, JSON on stdin), entered into a named namespace with agent/netns.py's
  ``exec_argv``; ``LibNft`` is libnftables in process through ctypes (no fork+exec), on a worker
  thread that enters the named namespace (agent/firewall/libnft.py re-exports it).
  ``backend_for(netns)`` picks libnftables when ``netns`` is the namespace this process runs in,
  else the CLI entered into it.
- ``in_place(document, existing)``: a table rendered whole (``add`` commands only) -> ONE
  transaction that moves the kernel's copy of that table to it IN PLACE: ``add table`` (idempotent),
  ``flush table`` (every rule goes in the next generation, so nothing references a set or chain),
  objects no longer wanted or declared differently deleted, wanted ones (re)declared (idempotent
  for an unchanged base chain: its hook stays registered), elements and rules added. Named
  counter objects are declared by name only: ``add counter`` on an existing one keeps its value
  and ``flush table`` leaves objects alone, so a count survives every reload (the NAT
  gateway's data processed); one no longer rendered is deleted. The kernel
  swaps generations at commit: packets see the old rules or the new ones, never an empty or
  missing base chain. (Deleting and re-adding the table instead registers the new base chains'
  hooks before the commit fills them; the firewall's blink test saw datagrams slip through.)
  The firewall builds the same shape itself (``render.Rendered.transaction``: its verdict maps
  reference chains, so they are flushed before chains go).
- ``load_in_place(backend, build, known, tables)``: the retry policy both tables use. ``build``
  turns "what exists" into a transaction; first from ``known`` (what the caller last loaded),
  and when the kernel refuses that (the table was changed by hand: the transaction is atomic, so
  nothing changed) or nothing is known, from the table read back with ``nft list ruleset``.

``FirewallApplyError`` is the one error of every load (its code is the firewall subsystem's; the
dataplane reports NAT load failures as its own DataplaneApplyFailed).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import queue
import subprocess
import threading
from typing import Any, Callable, Iterable, Optional, Protocol

from agent import netns as netns_mod
from agent.firewall.render import declaration

log = logging.getLogger(__name__)

Json = dict[str, Any]
#: (kind, family, name) -> declaration (see ``declaration``) of a chain, set or map.
Declarations = dict[tuple[str, str, str], Any]
#: (family, table name) pairs a caller owns.
Tables = Iterable[tuple[str, str]]
METAINFO: Json = {"metainfo": {"json_schema_version": 1}}


class FirewallApplyError(Exception):
    """nft refused a transaction or could not run. Nothing was changed (transactions are atomic)."""

    code = "FirewallApplyFailed"
    retryable = True

    def __init__(self, message: str, *, stderr: str = ""):
        super().__init__(message)
        self.stderr = stderr


class Backend(Protocol):
    def load(self, document: Json, *, check: bool = False) -> None: ...

    def list_ruleset(self) -> list[Json]: ...


class Nft:
    """Runs nft with JSON input/output in the current or a named network namespace."""

    def __init__(self, netns: Optional[str] = None, *, nft: str = "nft", timeout: float = 30.0):
        if netns is not None:
            netns_mod.valid_netns_name(netns)
        self.netns = netns
        self.nft = nft
        self.timeout = timeout

    def _argv(self, *args: str) -> list[str]:
        return netns_mod.exec_argv(self.netns, [self.nft, "-j", *args])

    def _run(self, args: list[str], stdin: Optional[str]) -> str:
        try:
            proc = subprocess.run(self._argv(*args), input=stdin, capture_output=True, text=True,
                                  timeout=self.timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise FirewallApplyError(f"could not run nft: {exc}") from exc
        if proc.returncode != 0:
            raise FirewallApplyError(f"nft failed (rc={proc.returncode}): {proc.stderr.strip()[:2000]}",
                                     stderr=proc.stderr)
        return proc.stdout

    def load(self, document: Json, *, check: bool = False) -> None:
        """Load one JSON document as one transaction (``--check``: validate only, change nothing)."""
        self._run(["--check", "-f", "-"] if check else ["-f", "-"], json.dumps(document))

    def list_ruleset(self) -> list[Json]:
        out = self._run(["list", "ruleset"], None)
        return json.loads(out).get("nftables", []) if out.strip() else []


# --- libnftables in process -------------------------------------------------------------------
# Talking to libnftables.so.1 directly saves the fork+exec of ``nft`` on every call (milliseconds
# on a busy host; the membership and single-rule updates must land in < 10 ms). Debian's
# python3-nftables binding does the same, but it is not installable into the venv; these few C
# calls are all we need. Network namespaces: a netlink socket belongs to the namespace of the
# thread that opened it, and ``setns`` moves only the calling thread. So every call runs on one
# private worker thread which, when ``netns`` is given, first enters it and then creates the nft
# context there; the rest of the process stays where it was.
CLONE_NEWNET = 0x40000000
NFT_CTX_OUTPUT_JSON = 1 << 4


def _lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("nftables") or "libnftables.so.1"
    lib = ctypes.CDLL(name)
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_set_dry_run.argtypes = [ctypes.c_void_p, ctypes.c_bool]
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
    return lib


def available() -> bool:
    try:
        _lib()
        return True
    except OSError:
        return False


class LibNft:
    """libnftables on a worker thread (inside ``netns`` when given). Call ``close()`` when done."""

    def __init__(self, netns: str | None = None):
        self.netns = netns
        self._jobs: queue.Queue = queue.Queue()
        ready: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._worker, args=(ready,), name="kumo-libnft", daemon=True)
        self._thread.start()
        err = ready.get()
        if err is not None:
            raise FirewallApplyError(f"libnftables unavailable: {err}")

    def _worker(self, ready: queue.Queue) -> None:
        try:
            lib = _lib()
            if self.netns is not None:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
                fd = os.open(netns_mod.netns_path(self.netns), os.O_RDONLY | os.O_CLOEXEC)
                try:
                    if libc.setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns failed")
                finally:
                    os.close(fd)
            ctx = lib.nft_ctx_new(0)
            if not ctx:
                raise OSError("nft_ctx_new failed")
            lib.nft_ctx_output_set_flags(ctx, NFT_CTX_OUTPUT_JSON)
            lib.nft_ctx_buffer_output(ctx)
            lib.nft_ctx_buffer_error(ctx)
        except Exception as exc:  # reported to the constructor
            ready.put(exc)
            return
        ready.put(None)
        while True:
            job = self._jobs.get()
            if job is None:
                lib.nft_ctx_free(ctx)
                return
            fn, reply = job
            try:
                reply.put((True, fn(lib, ctx)))
            except Exception as exc:
                reply.put((False, exc))

    def _call(self, fn: Callable[[Any, Any], Any]) -> Any:
        reply: queue.Queue = queue.Queue()
        self._jobs.put((fn, reply))
        ok, value = reply.get()
        if not ok:
            raise value
        return value

    @staticmethod
    def _run(lib: Any, ctx: Any, text: str, dry_run: bool = False) -> str:
        lib.nft_ctx_set_dry_run(ctx, dry_run)
        rc = lib.nft_run_cmd_from_buffer(ctx, text.encode())
        out = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode()
        err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode()
        lib.nft_ctx_set_dry_run(ctx, False)
        if rc != 0:
            raise FirewallApplyError(f"nft failed (rc={rc}): {err.strip()[:2000]}", stderr=err)
        return out

    def load(self, document: dict[str, Any], *, check: bool = False) -> None:
        text = json.dumps(document)
        self._call(lambda lib, ctx: self._run(lib, ctx, text, check))

    def list_ruleset(self) -> list[dict[str, Any]]:
        out = self._call(lambda lib, ctx: self._run(lib, ctx, '{"nftables": [{"list": {"ruleset": null}}]}'))
        return json.loads(out).get("nftables", []) if out.strip() else []

    def close(self) -> None:
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join(timeout=5)


def backend_for(netns: Optional[str]) -> Backend:
    """libnftables in process when ``netns`` is this process's namespace (None: this one), else
    the nft CLI entered into ``netns``. A LibNft holds a thread: close() it when done."""
    if netns_mod.is_current(netns):
        try:
            return LibNft()
        except (FirewallApplyError, OSError) as e:
            log.warning("libnftables unavailable (%s): using the nft CLI", e)
            return Nft()
    return Nft(netns=netns)


def close_backend(backend: Any) -> None:
    close = getattr(backend, "close", None)
    if close is not None:
        close()


def listing_declarations(objects: list[Json], tables: Tables) -> Declarations:
    """The chains, sets, maps and named counters of ``tables`` in ``nft -j list ruleset`` output, as
    ``declared()`` gives a document's (``render.declaration``: the part ``add`` cannot change)."""
    owned = set(tables)
    out: Declarations = {}
    for obj in objects:
        kind, body = next(iter(obj.items()))
        if kind in _DECLARED and isinstance(body, dict) \
                and (body.get("family"), body.get("table")) in owned:
            out[(kind, body["family"], body["name"])] = _declaration(kind, body)
    return out


#: Kinds of table objects a load declares (and deletes when no longer rendered).
_DECLARED = ("chain", "set", "map", "counter")


def _declaration(kind: str, body: Json) -> Any:
    # A counter has nothing ``add`` could not keep: its identity is its name (its value is data).
    return None if kind == "counter" else declaration(kind, body)


def _adds(document: Json) -> list[tuple[str, Json]]:
    """(kind, body) of every ``add`` command (anything else, e.g. the flushes and deletes of a
    transaction built from it, is left out: ``in_place`` builds those again)."""
    out = []
    for cmd in document["nftables"]:
        if "add" in cmd:
            out.append(next(iter(cmd["add"].items())))
    return out


def declared(document: Json) -> Declarations:
    """Declarations of every chain, set, map and named counter a rendered document adds."""
    return {(kind, body["family"], body["name"]): _declaration(kind, body)
            for kind, body in _adds(document) if kind in _DECLARED}


def in_place(document: Json, existing: Optional[Declarations] = None) -> Json:
    """ONE transaction moving the kernel from ``existing`` (default: the document's own layout,
    i.e. a previous load of the same shape, or nothing) to ``document`` in place. ``document``:
    a table rendered whole, or a transaction built by this function (idempotent). For tables whose
    verdict maps reference no chain (the firewall has its own: render.Rendered.transaction)."""
    adds = _adds(document)
    want = declared(document)
    existing = want if existing is None else existing
    stale = sorted(k for k, spec in existing.items() if want.get(k, _MISSING) != spec)
    tables = [body for kind, body in adds if kind == "table"]
    cmds: list[Json] = [METAINFO]
    cmds += [{"add": {"table": t}} for t in tables]
    cmds += [{"flush": {"table": t}} for t in tables]
    cmds += [{"delete": {k[0]: _ref(k, tables)}} for k in stale if k[0] != "chain"]
    cmds += [{"add": {kind: body}} for kind, body in adds if kind == "counter"]
    for kind, body in adds:
        if kind in ("set", "map"):
            cmds += [{"add": {kind: body}}, {"flush": {kind: _ref((kind, body["family"], body["name"]), tables)}}]
    cmds += [{"delete": {"chain": _ref(k, tables)}} for k in stale if k[0] == "chain"]
    for verb in ("chain", "element", "rule"):
        cmds += [{"add": {kind: body}} for kind, body in adds if kind == verb]
    return {"nftables": cmds}


_MISSING = object()


def _ref(key: tuple[str, str, str], tables: list[Json]) -> Json:
    (table,) = [t["name"] for t in tables if t["family"] == key[1]]
    return {"family": key[1], "table": table, "name": key[2]}


def load_in_place(backend: Backend, build: Callable[[Declarations], Json], known: Optional[Declarations],
                  tables: Tables, listing: Optional[list[Json]] = None) -> None:
    """Load ``build(existing)``: ``existing`` from ``listing`` (the ruleset just read) if given, else
    ``known`` (what the caller last loaded), else (nothing known, or the kernel refused it: it is not
    what we loaded) from the ruleset read back now."""
    tables = list(tables)
    if listing is None and known is not None:
        try:
            backend.load(build(known))
            return
        except FirewallApplyError:
            pass  # atomic: nothing changed; build the transaction again from what is there
    if listing is None:
        listing = backend.list_ruleset()
    backend.load(build(listing_declarations(listing, tables)))
