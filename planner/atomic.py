"""Atomic file writes: write a temporary file beside the target, then rename it into place.

A new file gets the mode the user's umask gives (0666 & ~umask), like ``open(path, "w")``; an
existing file keeps its mode. ``together`` commits several outputs of one command at the end,
so a command that fails (or is interrupted) before the end writes none of them.
"""
from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _final_mode(target: Path) -> int:
    """The mode ``target`` should have: its own if it exists, else what the umask gives."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(target: str | Path):
    """Yield a temporary path next to ``target``; on success it replaces ``target`` (with the
    mode of the file it replaces, or the umask's for a new file), on error it is removed, so a
    failed run never leaves a half-written file."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _final_mode(target))
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def together(*targets: str | Path | None):
    """Yield one temporary path per target (None for a None target); when the block finishes
    without error every target is replaced by its temporary file, one after another; on error
    none is touched and the temporary files are removed."""
    with contextlib.ExitStack() as stack:
        paths = [None if t is None else stack.enter_context(atomic_path(t)) for t in targets]
        yield paths


def write_text(target: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically: readers see the old file or the whole new one."""
    with atomic_path(target) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
