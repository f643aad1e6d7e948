"""Running build steps: external commands and Python blocks, with failures named by step."""

from __future__ import annotations

import contextlib
import errno
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from images.errors import BuildError

Log = Callable[[str], None]


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run(step: str, argv: Sequence[str | Path], *, cwd: Path | None = None, env: dict | None = None,
        input: bytes | None = None, timeout: float = 1800) -> str:
    """Run one command (argv list, never a shell string). Raise BuildError(step) if it fails."""
    args = [str(a) for a in argv]
    if shutil.which(args[0]) is None and not Path(args[0]).exists():
        raise BuildError(step, f"required tool {args[0]!r} is not installed")
    try:
        proc = subprocess.run(args, cwd=cwd, env=env, input=input, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BuildError(step, f"{args[0]} timed out after {timeout:.0f}s") from None
    except OSError as e:
        raise BuildError(step, f"cannot run {args[0]}: {e}") from e
    out = proc.stdout.decode(errors="replace")
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace")
        raise BuildError(step, f"{' '.join(args[:6])}{' ...' if len(args) > 6 else ''} exited "
                               f"{proc.returncode}: {_tail(err or out)}")
    return out


@contextlib.contextmanager
def step(name: str, log: Log | None = None) -> Iterator[None]:
    """Name a block of build work: Python errors inside it become BuildError(name)."""
    t0 = time.monotonic()
    if log:
        log(f"[{name}] ...")
    try:
        yield
    except BuildError:
        raise
    except OSError as e:
        hint = " (no space left on the cache's filesystem)" if e.errno == errno.ENOSPC else ""
        raise BuildError(name, f"{e}{hint}") from e
    except Exception as e:  # noqa: BLE001 - any failure must carry the step name
        raise BuildError(name, f"{type(e).__name__}: {e}") from e
    if log:
        log(f"[{name}] done in {time.monotonic() - t0:.1f}s")
