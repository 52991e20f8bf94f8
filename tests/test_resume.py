"""A run killed in the middle of a task resumes from its last checkpoint to exactly the same result.

CPU, quick ``digits`` stream (4 permuted tasks), EWC with a sampled Fisher plus a small
strategy that draws from PyTorch's global generator every task, so model, optimiser
rebuild, importances, anchors, accuracy matrix and RNG state all have to come back for
the matrices to be equal (``==``, not approximately).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import clutils
from clutils.checkpoint import ConfigMismatchError
from clutils.strategies import Strategy
from conftest import devices

N_TASKS = 4
KILL_TASK = 2  # the subprocess is killed in the middle of this task (0-based) ...
KILL_STEP = 80  # ... at this optimisation step of its 4 x 43 steps
KILL_ENV = "CLBOOK_TEST_KILL_AT"  # "task:step:marker-file": the step at which the subprocess waits to be killed


class Nudge(Strategy):
    """A penalty whose weight is drawn from the global torch RNG before each task.

    :math:`\\mathcal R = s_t\\,10^{-3}\\,\\overline{h_L}`, :math:`s_t\\sim U(0,1)`: if a resumed run did
    not restore the RNG state, :math:`s_t` and with it the whole trajectory would change.
    Under ``$CLBOOK_TEST_KILL_AT`` it stops at a known step of a known task and waits to be killed.
    """

    name = "nudge"

    def __init__(self):
        super().__init__()
        self.scale = 0.0
        self.steps = 0
        kill = os.environ.get(KILL_ENV)
        self.kill = None if kill is None else (int(kill.split(":")[0]), int(kill.split(":")[1]), kill.split(":", 2)[2])

    def before_task(self, model, stream, t):
        self.scale = float(torch.rand(()))
        self.steps = 0

    def penalty(self, model, t, hidden):
        self.steps += 1
        if self.kill and (t, self.steps) == self.kill[:2]:
            Path(self.kill[2]).write_text(f"task {t} step {self.steps}")
            time.sleep(600)  # the test kills us here
        return self.scale * 1e-3 * hidden[-1].mean()


def run(checkpoint_dir=None, *, stop_after_task=None, seed=0, lam=10.0, lr=0.05):
    """The experiment: same code in the test process and in the subprocess that gets killed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # identical float reductions in every process
    try:
        clutils.seed_everything(seed)
        stream = clutils.make_stream("permuted", "digits", n_tasks=N_TASKS, seed=0)
        model = clutils.MLP(64, (32, 32), 10)
        strategy = clutils.Compose(clutils.EWC(lam, fisher="sampled", n_samples=300, seed=0), Nudge())
        cfg = clutils.TrainConfig(epochs=4, batch_size=32, lr=lr, momentum=0.9, seed=seed, eval_every_epoch=True)
        return clutils.train_stream(model, stream, strategy, cfg, device="cpu", checkpoint_dir=checkpoint_dir,
                                    progress=False, stop_after_task=stop_after_task)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def uninterrupted():
    return run()


def _ckpt_task(folder: Path) -> int:
    return torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=False)["task"]


def test_stopped_after_task_then_resumed_gives_the_same_matrix(tmp_path, uninterrupted):
    first = run(tmp_path, stop_after_task=1)
    assert len(first.acc) == 2 and first.acc == uninterrupted.acc[:2]
    assert _ckpt_task(tmp_path) == 1
    resumed = run(tmp_path)
    assert resumed.acc == uninterrupted.acc
    assert resumed.curves == uninterrupted.curves
    # the run really learned and forgot something: the matrix is not trivial
    R = uninterrupted.R
    assert R.shape == (N_TASKS, N_TASKS) and R.diagonal().min() > 0.75


def test_killed_mid_task_then_resumed_gives_the_same_matrix(tmp_path, uninterrupted):
    ckpt, marker = tmp_path / "run", tmp_path / "reached"
    script = ("import sys; sys.path.insert(0, sys.argv[1]); import test_resume; "
              "test_resume.run(sys.argv[2])")
    env = {**os.environ, KILL_ENV: f"{KILL_TASK}:{KILL_STEP}:{marker}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script, str(Path(__file__).parent), str(ckpt)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + 300
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(f"the run ended before the kill point:\n{proc.stdout.read().decode()[-2000:]}")
            assert time.monotonic() < end, "the subprocess never reached the kill point"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert marker.read_text() == f"task {KILL_TASK} step {KILL_STEP}"
    assert _ckpt_task(ckpt) == KILL_TASK - 1, "the last checkpoint should be the last finished task"

    resumed = run(ckpt)
    assert resumed.acc == uninterrupted.acc
    assert resumed.curves == uninterrupted.curves
    assert _ckpt_task(ckpt) == N_TASKS - 1


def test_resume_is_sensitive_to_the_rng_state(tmp_path, uninterrupted, monkeypatch):
    """The equality above is not vacuous: resuming without restoring the RNG state changes the matrix."""
    run(tmp_path, stop_after_task=1)
    monkeypatch.setattr(torch, "set_rng_state", lambda state: None)
    assert run(tmp_path).acc != uninterrupted.acc


def test_finished_run_in_the_same_folder_is_returned_without_training(tmp_path, uninterrupted):
    run(tmp_path)
    again = run(tmp_path)
    assert again.acc == uninterrupted.acc and len(again.timings["train_s"]) == N_TASKS


@pytest.mark.parametrize("change", [{"lam": 5.0}, {"lr": 0.02}, {"seed": 1}], ids=["lambda", "lr", "seed"])
def test_other_configuration_in_the_same_folder_is_refused(tmp_path, change):
    run(tmp_path, stop_after_task=0)
    with pytest.raises(ConfigMismatchError, match="different configuration.*new checkpoint folder"):
        run(tmp_path, **change)
    assert _ckpt_task(tmp_path) == 0  # the refused run wrote nothing


def test_model_initialised_differently_is_refused(tmp_path):
    """Same settings but other initial weights (e.g. a different SEED before building the model)."""
    run(tmp_path, stop_after_task=0)
    clutils.seed_everything(7)
    stream = clutils.make_stream("permuted", "digits", n_tasks=N_TASKS, seed=0)
    model = clutils.MLP(64, (32, 32), 10)
    strategy = clutils.Compose(clutils.EWC(10.0, fisher="sampled", n_samples=300, seed=0), Nudge())
    cfg = clutils.TrainConfig(epochs=4, batch_size=32, lr=0.05, momentum=0.9, seed=0, eval_every_epoch=True)
    with pytest.raises(ConfigMismatchError):
        clutils.train_stream(model, stream, strategy, cfg, device="cpu", checkpoint_dir=tmp_path, progress=False)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("make", [lambda: clutils.EWC(20.0), lambda: clutils.EWC(20.0, mode="online", gamma=0.8),
                                  lambda: clutils.MAS(0.5),
                                  lambda: clutils.Compose(clutils.MAS(0.5), clutils.SSL("slnid", 1e-2))],
                         ids=["ewc-separate", "ewc-online", "mas", "mas+slnid"])
def test_stop_and_resume_gives_the_uninterrupted_matrix_on_every_device(tmp_path, device, make):
    stream = clutils.make_stream("permuted", "digits", n_tasks=3, seed=0, device=device)
    cfg = clutils.TrainConfig(epochs=2, batch_size=64, lr=0.05, seed=2)

    def go(**kw):
        clutils.seed_everything(0)
        return clutils.train_stream(clutils.MLP(64, (32, 32), 10), stream, make(), cfg, device=device,
                                    progress=False, **kw)

    whole = go()
    go(checkpoint_dir=tmp_path, stop_after_task=0)
    go(checkpoint_dir=tmp_path, stop_after_task=1)  # resumes at task 1, stops again after it
    resumed = go(checkpoint_dir=tmp_path)  # a fresh strategy object loads the saved buffers, on the device
    assert resumed.acc == whole.acc
    assert resumed.timings["device"].startswith(device)
