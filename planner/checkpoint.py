"""A checkpoint of finished work: one JSON object per line, appended and flushed as each piece
finishes, so a run killed at any moment (Ctrl-C, kill -9) loses at most the piece in progress.
A rerun reads it and skips what is there. A torn last line (killed mid-write) is ignored.
"""
from __future__ import annotations

import json
import os
from pathlib import Path


class Checkpoint:
    """``get(key)`` / ``put(key, value)`` over a JSON-lines file; values are JSON data."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.done: dict[str, object] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill
                if isinstance(entry, dict) and "key" in entry:
                    self.done[entry["key"]] = entry.get("value")

    def __contains__(self, key: str) -> bool:
        return key in self.done

    def get(self, key: str):
        return self.done.get(key)

    def put(self, key: str, value) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"key": key, "value": value}, sort_keys=True)
        with open(self.path, "a") as f:
            if f.tell() > 0 and not self._ends_with_newline():
                f.write("\n")
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.done[key] = value

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
