"""One writer per run folder: processes that would write the same run at once (resumes of
one run, new runs given one ``hydra.run.dir``) leave exactly one training; the others stop in
one sentence naming the process that holds the run, and the run's records hold every step
once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import EVERY_STEP_LOGGED, cli_env
from diffusion.errors import RunError
from diffusion.runs.lock import WriterLock
from diffusion.training.loggers import read_metrics

TINY = [*EVERY_STEP_LOGGED, "trainer.ckpt_every=10"]


def _together(*commands: list[str]) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen([sys.executable, "-m", "diffusion.train", *args],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env=cli_env()) for args in commands]
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=300), None, p.stderr.read())
            for p in procs]


def _one_trained_the_others_refused(results, run: Path) -> None:
    codes = sorted(r.returncode for r in results)
    assert codes == [0] + [1] * (len(results) - 1), [r.stderr[-800:] for r in results]
    for refused in (r for r in results if r.returncode == 1):
        assert "Traceback" not in refused.stderr
        last = refused.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: {run.resolve()} is being written by process "), last
        assert last.endswith("wait for it to end or stop it, then try again.")


def test_three_resumes_of_one_run_train_it_once(tmp_path, tiny_mnist_root):
    run = tmp_path / "run"
    first = subprocess.run([sys.executable, "-m", "diffusion.train", *TINY,
                            f"paths.data_dir={tiny_mnist_root}", "trainer.max_steps=10",
                            f"hydra.run.dir={run}"], capture_output=True, text=True,
                           env=cli_env(), timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    results = _together(*[[f"resume={run}", "trainer.max_steps=400"]] * 3)
    _one_trained_the_others_refused(results, run)
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl") if "train/loss" in r]
    assert steps == list(range(1, 401))


def test_two_new_runs_given_one_folder_train_one_run(tmp_path, tiny_mnist_root):
    run = tmp_path / "shared"
    args = [*TINY, f"paths.data_dir={tiny_mnist_root}", "trainer.max_steps=300",
            f"hydra.run.dir={run}"]
    results = _together(args, [*args, "seed=1"])
    codes = sorted(r.returncode for r in results)
    assert codes == [0, 1], [r.stderr[-800:] for r in results]
    refused = next(r for r in results if r.returncode == 1).stderr.strip().splitlines()[-1]
    assert "Traceback" not in refused
    assert refused.startswith((f"error: {run.resolve()} is being written by process ",
                               f"error: hydra.run.dir={run} already holds a run")), refused
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl") if "train/loss" in r]
    assert steps == list(range(1, 301))


def test_the_lock_is_reentrant_in_a_process_and_names_the_holder_elsewhere(tmp_path):
    run = tmp_path / "run"
    with WriterLock(run), WriterLock(run):  # the checks and the training share it
        code = ("import sys; from diffusion.runs.lock import WriterLock; "
                f"WriterLock({str(run)!r}).acquire()")
        other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert other.returncode == 1
        assert f"is being written by process {os.getpid()} " in other.stderr
    WriterLock(run).acquire().release()  # free again once released


def test_a_held_lock_is_a_run_error(tmp_path):
    run = tmp_path / "run"
    code = ("import sys, time; from diffusion.runs.lock import WriterLock; "
            f"WriterLock({str(run)!r}).acquire(); print('held', flush=True); time.sleep(30)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunError, match=f"is being written by process {holder.pid} "):
            WriterLock(run).acquire()
    finally:
        holder.kill()
        holder.wait()
    WriterLock(run).acquire().release()  # the holder's death freed it
