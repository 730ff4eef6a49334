"""Reading what users hand mpq by path: Python objects named ``path/file.py:name`` or
``package.module:name``, JSON documents, and the paths a command reads and writes.

What a user can fix is one MpqError line; mpq's own modules are not the user's: an error while
importing them is a bug and propagates as it is.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import tempfile
from pathlib import Path

from planner.errors import MpqError

#: Packages that ship with mpq: an error importing them is mpq's bug, not the user's.
OWN_PACKAGES = ("planner", "costmodels", "hw")
#: The largest JSON document mpq reads (bytes); plans and gains files are far smaller.
MAX_JSON_BYTES = 256 * 2 ** 20


def one_line(text: object) -> str:
    """``text`` with its lines joined by " | " (an error message must be one line)."""
    return " | ".join(part.strip() for part in str(text).splitlines() if part.strip())


def not_a_file(path: Path, missing: str) -> MpqError:
    """The error for a ``path`` that is not a regular file: ``missing`` (e.g. "no such plan file")
    when nothing is there, else what is there instead: a folder, or a device, pipe or socket,
    which mpq must not read (/dev/zero never ends)."""
    if not path.exists():
        return MpqError(f"{path}: {missing}")
    what = "a folder" if path.is_dir() else "a device, pipe or socket"
    return MpqError(f"{path}: is {what}, not a file; give the path of a file")


def _user_code_failed(what: str, where: str, error: BaseException) -> MpqError:
    detail = one_line(error) or "no message"
    if isinstance(error, SystemExit):
        return MpqError(f"{what}: {where} called sys.exit({error.code!r}) while loading; "
                        "a task or cost-model file must not exit")
    return MpqError(f"{what}: {where} failed ({type(error).__name__}: {detail}); fix it and try again")


def _is_own(module: str) -> bool:
    return module.split(".")[0] in OWN_PACKAGES


def load_object(ref: str, what: str):
    """The object ``name`` of ``path/file.py:name`` or ``package.module:name``; ``what`` names
    the kind of thing for error messages (e.g. "--task mnist2"). An error raised by the user's
    code while it loads (even ``sys.exit``) is an MpqError; one raised by mpq's own packages
    propagates (a bug)."""
    where, _, name = ref.rpartition(":")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise not_a_file(path, f"no such file (for {what})")
        spec = importlib.util.spec_from_file_location(f"mpq_user_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except (Exception, SystemExit) as e:  # the user's file: whatever it raises is theirs to fix
            raise _user_code_failed(what, f"{path} failed to import;", e) from None
    else:
        if not where:
            raise MpqError(f"{what}: expected package.module:object or path/file.py:object")
        own = _is_own(where)
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as e:
            if e.name and where.startswith(e.name):
                raise MpqError(f"{what}: module '{where}' " + ("does not exist" if own else
                               f"does not import (no module named '{e.name}')")) from None
            if not own:
                raise _user_code_failed(what, f"module '{where}'", e) from None
            if e.name and not _is_own(e.name):
                raise MpqError(f"{what}: needs the Python package '{e.name}', which is not installed") from None
            raise  # one of mpq's modules is missing another of mpq's: a bug
        except (Exception, SystemExit) as e:
            if own:
                raise  # one of mpq's own modules failed: a bug
            raise _user_code_failed(what, f"module '{where}'", e) from None
    if not hasattr(module, name):
        raise MpqError(f"{what}: '{where}' has no '{name}'")
    return getattr(module, name)


def call_user(fn, what: str):
    """``fn()`` for a user's factory (a task class or function): what it raises is an MpqError."""
    try:
        return fn()
    except (Exception, SystemExit) as e:
        raise _user_code_failed(what, f"calling {getattr(fn, '__name__', fn)!s}()", e) from None


def source_sha256(ref: str) -> str:
    """The sha256 of the source file behind ``path/file.py:object`` or ``package.module:object``
    (a task or cost model), so that results keyed by it change when the code does; "" when the
    module has no file."""
    import hashlib

    where = ref.rpartition(":")[0]
    if where.endswith(".py"):
        path = Path(where)
    else:
        try:
            spec = importlib.util.find_spec(where)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.origin or not Path(spec.origin).is_file():
            return ""
        path = Path(spec.origin)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def read_bytes(path: Path, kind: str, limit: int) -> bytes:
    """The bytes of the user's ``kind`` file at ``path`` ("spec", "plan", ...). Raises MpqError
    when there is no such file or it is larger than ``limit`` bytes."""
    if not path.is_file():
        raise not_a_file(path, f"no such {kind} file")
    size = path.stat().st_size
    if size > limit:
        raise MpqError(f"{path}: {size:,} bytes is too large for a {kind} file (at most {limit:,})")
    return path.read_bytes()


def read_json(path: str | Path, kind: str):
    """The JSON document at ``path``; ``kind`` names it in errors ("plan", "gains"). Strict
    JSON: ``NaN`` and ``Infinity`` are refused, as is nesting deeper than Python can parse."""
    path = Path(path)
    raw = read_bytes(path, kind, MAX_JSON_BYTES)
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise MpqError(f"{path}: not a text file (not UTF-8); expected a {kind} JSON file") from None
    except (json.JSONDecodeError, ValueError) as e:
        raise MpqError(f"{path}: not valid JSON ({one_line(e)}); expected a {kind} file") from None
    except RecursionError:
        raise MpqError(f"{path}: JSON nested too deeply; expected a {kind} file") from None


def finite(value, what: str) -> float:
    """``value`` as a finite float, else an MpqError naming ``what``."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise MpqError(f"{what}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise MpqError(f"{what}: {value!r} is not a finite number")
    return number


def _resolved(path: str) -> Path:
    return Path(os.path.abspath(path)).resolve()


def _same(a: str, b: str) -> bool:
    if _resolved(a) == _resolved(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output(label: str, path: str) -> None:
    """Raise MpqError unless ``path`` can be written as a file: not empty, not a directory or
    other non-regular file, its folder (or nearest existing ancestor) a writable directory."""
    if not path or not path.strip():
        raise MpqError(f"{label}: empty file name; give the path of a file to write")
    target = Path(path)
    if target.is_dir():
        raise MpqError(f"{label} {path}: is a directory; give a file name inside it")
    if target.exists() and not target.is_file():
        raise MpqError(f"{label} {path}: not a regular file; give the path of a file to write")
    folder = Path(os.path.abspath(path)).parent
    while not folder.exists() and not folder.is_symlink():
        folder = folder.parent
    if not folder.is_dir():
        raise MpqError(f"{label} {path}: {folder} is not a directory; choose another place")
    try:
        fd, probe = tempfile.mkstemp(prefix=".mpq-probe.", dir=folder)
    except OSError as e:
        raise MpqError(f"{label} {path}: cannot write in {folder} ({e.strerror}); choose another place") from None
    os.close(fd)
    os.unlink(probe)


def check_paths(inputs: dict[str, str | None], outputs: dict[str, str | None]) -> None:
    """Before any work: every output writable, no two outputs the same file, and no output the
    same file as an input (which it would replace). Keys are the options' names for messages;
    None values are skipped."""
    outs = [(label, str(p)) for label, p in outputs.items() if p is not None]
    ins = [(label, str(p)) for label, p in inputs.items() if p is not None and str(p)]
    for label, path in outs:
        check_output(label, path)
    for i, (label, path) in enumerate(outs):
        for other_label, other in outs[:i]:
            if _same(path, other):
                raise MpqError(f"{label} {path} is the same file as {other_label} {other}; give each output its "
                               "own name")
        for in_label, source in ins:
            if os.path.exists(source) and _same(path, source):
                raise MpqError(f"{label} {path} is the input {in_label} {source}; writing it would replace the "
                               "input: choose another output name")
