"""Long work that survives interruption: a resumable job store and the executors that run jobs.

``store.JobStore`` records each finished job (a JSON line, flushed) so a rerun skips it;
``executors.run_jobs`` runs independent jobs in this process, in worker processes or on Ray.
"""
from planner.jobs.executors import run_jobs
from planner.jobs.store import JobStore

__all__ = ["JobStore", "run_jobs"]
