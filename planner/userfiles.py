"""Reading what users hand mpq by path: Python objects named ``path/file.py:name`` or
``package.module:name``, and JSON documents. Every failure is one MpqError line."""
from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path

from .errors import MpqError


def load_object(ref: str, what: str):
    """The object ``name`` of ``path/file.py:name`` or ``package.module:name``; ``what`` names
    the kind of thing for error messages (e.g. "--task mnist2")."""
    where, _, name = ref.rpartition(":")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise MpqError(f"{what}: no such file {path}")
        spec = importlib.util.spec_from_file_location(f"mpq_user_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            raise MpqError(f"{what}: {path} failed to import ({type(e).__name__}: {e})") from None
    else:
        try:
            module = importlib.import_module(where)
        except Exception as e:
            raise MpqError(f"{what}: module '{where}' does not import ({type(e).__name__}: {e})") from None
    if not hasattr(module, name):
        raise MpqError(f"{what}: '{where}' has no '{name}'")
    return getattr(module, name)


def read_json(path: str | Path, kind: str):
    """The JSON document at ``path``; ``kind`` names it in errors ("plan", "gains")."""
    path = Path(path)
    if not path.is_file():
        raise MpqError(f"{path}: no such {kind} file")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MpqError(f"{path}: not valid JSON ({e}); expected a {kind} file") from None
