"""The job store: a resumable record of finished work: one JSON object per line, appended and flushed as each piece
finishes, so a run killed at any moment (Ctrl-C, kill -9) loses at most the piece in progress.
A rerun reads it and skips what is there. A torn last line (killed mid-write) is ignored; any
other line that is not a checkpoint entry means the file is not a checkpoint: MpqError.

Keys must hash everything that determines their value (see ``planner.gains.datadriven.config_key``),
so entries made for other inputs are never matched; ``unused()`` counts them for a note.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from planner.errors import MpqError


class JobStore:
    """``get(key)`` / ``put(key, value)`` over a JSON-lines file; values are JSON data.

    Raises MpqError when ``path`` is a directory or another kind of file (binary, corrupt)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.done: dict[str, object] = {}
        self.read: set[str] = set()
        if self.path.is_dir():
            raise MpqError(f"{self.path}: is a directory, not a checkpoint file; remove it or give another "
                           "--resume-file")
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        what = f"{self.path}: not an mpq checkpoint (JSON lines of finished work)"
        try:
            lines = self.path.read_bytes().decode("utf-8").splitlines()
        except UnicodeDecodeError:
            raise MpqError(f"{what}: it is not text; delete it to start afresh") from None
        except OSError as e:
            raise MpqError(f"{self.path}: cannot read the checkpoint ({e.strerror})") from None
        for number, line in enumerate(lines, start=1):
            try:
                entry = json.loads(line, parse_constant=_no_constant)
            except (ValueError, RecursionError):
                if number == len(lines):
                    continue  # a line cut short by a kill
                raise MpqError(f"{what}: line {number} is not JSON; delete it to start afresh") from None
            if not (isinstance(entry, dict) and isinstance(entry.get("key"), str) and "value" in entry):
                raise MpqError(f"{what}: line {number} is not a checkpoint entry; delete it to start afresh")
            self.done[entry["key"]] = entry["value"]

    def __contains__(self, key: str) -> bool:
        return key in self.done

    def get(self, key: str):
        """The value stored under ``key`` (None if none); counts the key as used (see :meth:`unused`)."""
        if key in self.done:
            self.read.add(key)
        return self.done.get(key)

    def unused(self) -> int:
        """How many stored entries no ``get`` asked for (made for other inputs, or not needed)."""
        return len(set(self.done) - self.read)

    def put(self, key: str, value) -> None:
        """Append ``key``: ``value`` to the file as one JSON line, synced to disk so that it survives
        a kill. Raises MpqError when ``value`` holds a non-finite number (not JSON)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            line = json.dumps({"key": key, "value": value}, sort_keys=True, allow_nan=False)
        except ValueError:
            raise MpqError(f"a job gave a non-finite result ({value!r}; did training diverge? try a lower --lr); "
                           f"finished jobs are kept in {self.path}") from None
        with open(self.path, "a") as f:
            if f.tell() > 0 and not self._ends_with_newline():
                f.write("\n")
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.done[key] = value
        self.read.add(key)

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def remove(self) -> None:
        """Delete the file (nothing happens if it does not exist)."""
        self.path.unlink(missing_ok=True)


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def resume_path(output: str | None) -> str | None:
    """Where a command keeps the job store of the work behind ``output``: ``OUTPUT.partial.jsonl``
    beside it (removed when the command finishes), or None without an output. The one default of
    every resumable command (gains alps and sensitivity, frontier, sweep)."""
    return f"{output}.partial.jsonl" if output else None
