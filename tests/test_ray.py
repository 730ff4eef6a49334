"""The Ray executor on a private local instance: same gains as the local executor, and a job
whose worker is killed is run again, its result checkpointed exactly once."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import conftest

pytest.importorskip("ray")
pytestmark = pytest.mark.ray

TINY = str(Path(__file__).with_name("tiny_task.py")) + ":task"
ALPS = ("--epochs", "0.5", "--seeds", "1")  # 1 base seed + 6 groups, a few seconds per job
JOBS = 1 + 6
TIMEOUT_S = 240


def mpq(*args, cwd=None):
    return conftest.mpq(*args, cwd=cwd, timeout=TIMEOUT_S)


def gains_of(path: Path) -> tuple:
    doc = json.loads(path.read_text())
    return [g["gains"] for g in doc["groups"]], doc["extra"]["base_scores"], doc["extra"]["group_scores"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Tiny task, LSQ 4-bit (pinned 8) from scratch, briefly, via the CLI: a poor model is as
    good as any for comparing executors."""
    folder = tmp_path_factory.mktemp("tiny_ray")
    result = mpq("train", "--task", TINY, "--bits", "4", "--epochs", "0.5", "-o", folder / "w4.pt")
    assert result.returncode == 0, result.stderr
    return folder


@pytest.fixture(scope="module")
def local_gains(trained):
    out = trained / "local.json"
    result = mpq("gains", "alps", "--task", TINY, "--checkpoint", trained / "w4.pt", *ALPS, "--executor", "local",
                 "-o", out)
    assert result.returncode == 0, result.stderr
    return gains_of(out)


def test_ray_gains_equal_local(trained, local_gains, tmp_path):
    """A relative task path works too: the executor hands workers absolute paths."""
    task = os.path.relpath(TINY, tmp_path)
    result = mpq("gains", "alps", "--task", task, "--checkpoint", trained / "w4.pt", *ALPS, "--executor", "ray",
                 "--workers", "2", "-o", "ray.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert gains_of(tmp_path / "ray.json") == local_gains


def running_job(process: psutil.Process) -> psutil.Process | None:
    """A Ray worker under ``process`` that is executing an ALPS job (Ray titles it 'ray::alps_job')."""
    for child in process.children(recursive=True):
        try:
            title = " ".join(child.cmdline())
        except psutil.Error:  # exited meanwhile
            continue
        if "ray::" in title and "alps_job" in title:
            return child
    return None


def test_killed_worker_job_is_rerun_once(trained, local_gains, tmp_path):
    out, resume = tmp_path / "alps.json", tmp_path / "alps.partial.jsonl"
    command = [sys.executable, "-m", "planner", "gains", "alps", "--task", TINY, "--checkpoint", str(trained / "w4.pt"),
               *ALPS, "--executor", "ray", "--workers", "2", "--resume-file", str(resume), "-o", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        driver, victim, deadline = psutil.Process(process.pid), None, time.time() + TIMEOUT_S
        while victim is None and process.poll() is None and time.time() < deadline:
            victim = running_job(driver)
            if victim is None:
                time.sleep(0.02)
        assert victim is not None, "no Ray worker was seen running a job"
        done_before = len(resume.read_text().splitlines()) if resume.exists() else 0
        victim.send_signal(signal.SIGKILL)  # a second or so into a job that takes several
        _, stderr = process.communicate(timeout=TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()  # kills the driver; its Ray instance goes with it
            process.wait()
    assert process.returncode == 0, stderr
    assert done_before < JOBS
    keys = [json.loads(line)["key"] for line in resume.read_text().splitlines() if line.strip()]
    assert len(keys) == len(set(keys)) == JOBS  # every job once, the killed one included
    assert gains_of(out) == local_gains


def test_job_errors_come_back_as_themselves(tmp_path):
    """A job that raises is not retried; its own error (here MpqError) reaches the caller."""
    script = ("from planner.errors import MpqError\n"
              "from planner.jobs.executors import run_jobs\n"
              "from planner.tasks import load_task\n"
              "try:\n"
              "    run_jobs(load_task, {'a': {'ref': 'no-such-task'}}, print, executor='ray', workers=1)\n"
              "except MpqError as e:\n"
              "    print('MpqError', e)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                            timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("MpqError --task 'no-such-task'"), result.stdout


def test_missing_ray_is_a_user_error(monkeypatch):
    from planner.errors import MpqError
    from planner.jobs.ray_executor import run_ray

    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # run_ray sets it; keep this process unchanged
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails as if not installed
    with pytest.raises(MpqError, match=r"pip install 'mpq\[ray\]'"):
        run_ray(len, {"a": {}}, print, workers=1, address=None)
