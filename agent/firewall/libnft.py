"""In-process nft backend: libnftables (the library behind the nft CLI) through ctypes.

Owns talking to libnftables.so.1 directly, which saves the fork+exec of ``nft`` on every call
(milliseconds on a busy host; the membership and single-rule updates must land in < 10 ms).
Same interface as ``apply.Nft`` (``load``, ``list_ruleset``). Debian's python3-nftables binding
does the same, but it is not installable into the venv; these six C calls are all we need.

Network namespaces: a netlink socket belongs to the namespace of the thread that opened it, and
``setns`` moves only the calling thread. So every call runs on one private worker thread which,
when ``netns`` is given, first enters /run/netns/NAME and then creates the nft context there.
The rest of the process stays where it was.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import queue
import threading
from typing import Any, Callable

from agent.firewall.apply import FirewallApplyError

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
                fd = os.open(f"/run/netns/{self.netns}", os.O_RDONLY | os.O_CLOEXEC)
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
