"""The Ray executor (the optional extra ``mpq[ray]``): one Ray task per job.

Without an address it starts a private Ray instance on this machine, bound to the loopback
address only, and shuts it down at the end; with one it connects to that cluster (whose nodes
must have mpq installed and any ``path/file.py:object`` task at the same absolute path).
A job whose worker dies (killed, out of memory, node lost) is run again by Ray; a job that
raises is not retried: its error is raised here. Ray is imported only when this executor runs.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from planner.errors import MpqError

log = logging.getLogger(__name__)

#: How often Ray re-runs a job whose worker died before it finished.
MAX_RETRIES = 3
#: Seconds between checks for Ctrl-C while waiting for results.
POLL_S = 1.0
#: Seconds to wait for a cluster's address to answer before giving up (Ray itself waits minutes).
CONNECT_TIMEOUT_S = 10.0


def check_address(address: str | None, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Raise MpqError unless ``address`` (``host:port`` or ``ray://host:port``; None, ``auto`` and
    ``local`` are not checked) accepts a TCP connection within ``timeout_s`` seconds."""
    import socket

    if not address or address in ("auto", "local"):
        return
    text = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise MpqError(f"--ray-address {address}: expected HOST:PORT (e.g. 10.0.0.5:6379) or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise MpqError(f"--ray-address {address}: no Ray cluster answers there ({e.strerror or e}); start one "
                       "with ray start --head, or leave out --ray-address for a local instance") from None


def run_ray(fn: Callable, jobs: dict[str, dict], on_result: Callable[[str, object], None], *,
            workers: int, address: str | None) -> None:
    """Run ``fn(**jobs[key])`` for every key as a Ray task and call ``on_result(key, value)`` in
    this process as each result arrives.

    ``fn`` must be a module-level function importable by the workers. ``address=None``: start a
    local instance with ``workers`` CPUs (all of them if 0), one job per CPU at a time. If Ray is
    already initialized in this process it is used as it is and left running. On any error or
    Ctrl-C, unfinished jobs are cancelled (their workers killed) and the error is re-raised.
    """
    if not jobs:
        return
    if address is None:
        # On Linux Ray binds its servers to the machine's network address unless told that no
        # cluster will join; this keeps a private instance on 127.0.0.1. Read when Ray is imported.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
        from ray.exceptions import RayTaskError
    except ImportError:
        raise MpqError("the ray executor needs Ray: pip install 'mpq[ray]'") from None

    started = not ray.is_initialized()
    if started:
        check_address(address)
        options = {"address": address} if address else {"num_cpus": workers or os.cpu_count(),
                                                         "include_dashboard": False}
        ray.init(**options, logging_level=logging.ERROR, log_to_driver=False)
        log.info("ray: %s", "connected to " + address if address else f"local instance, {options['num_cpus']} CPUs")
    remote = ray.remote(num_cpus=1, max_retries=MAX_RETRIES, retry_exceptions=False)(fn)
    pending: dict = {}
    try:
        pending = {remote.remote(**_portable(kwargs)): key for key, kwargs in jobs.items()}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
            for ref in ready:
                key = pending.pop(ref)
                try:
                    value = ray.get(ref)
                except RayTaskError as e:  # the job raised: raise its own error, not Ray's wrapper
                    cause = e.cause if isinstance(e.cause, BaseException) else e
                    raise cause from None
                on_result(key, value)
    except BaseException:
        for ref in pending:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # already finished or gone
                pass
        raise
    finally:
        if started:
            ray.shutdown()


def _portable(kwargs: dict) -> dict:
    """``kwargs`` with relative ``path/file.py:object`` references (task refs) made absolute,
    so workers whose working directory differs from this process's still find the file."""
    return {name: _absolute_ref(value) if isinstance(value, str) else value for name, value in kwargs.items()}


def _absolute_ref(value: str) -> str:
    where, sep, name = value.rpartition(":")
    if not sep or not where.endswith(".py") or Path(where).is_absolute() or not Path(where).is_file():
        return value
    return f"{Path(where).resolve()}:{name}"
