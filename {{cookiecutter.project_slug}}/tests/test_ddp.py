"""Data-parallel training on CPU, through the command users run.

Every run here is `python -m {{ cookiecutter.package_name }} fit ...` in a subprocess; with
`--trainer.devices=2 --trainer.strategy=ddp` Lightning starts the second process by running the
same command again, and the two exchange gradients through gloo as they would through NCCL on
GPUs. The data module deals each epoch's permutation out to the ranks, so two processes with
batch B see, step for step, the samples that one process sees with batch 2B:

    one process, batch 8    [s0 s1 s2 s3 s4 s5 s6 s7]  [s8 ...
    rank 0, batch 4         [s0 s2 s4 s6]              [s8 ...
    rank 1, batch 4         [s1 s3 s5 s7]              [s9 ...

{% if cookiecutter.task == 'language_model' %}Selective copying scores the same number of targets in every sample{% else %}A classifier scores one label per sample{% endif %}, so the mean of the ranks'
losses is the loss of the whole batch and DDP's averaged gradient is its gradient: the two
trainings are the same computation, up to the order of floating-point additions.

The independent runs start together to share the wait for imports; the whole file takes
about 30 s on two cores.
"""

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import PACKAGE, PROJECT, QUIET, TASK_MODEL, TINY_BACKBONE, TINY_DATA
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

SAMPLES = 64
BATCH = 4  # per process; the one-process run uses 2 * BATCH
STEPS_PER_EPOCH = SAMPLES // (2 * BATCH)  # 8
MAX_STEPS = 10  # crosses into the second epoch, which draws a new permutation
STOP_AT = 3  # the interrupted run stops mid-epoch, then continues to MAX_STEPS

# Measured differences between one process and two: 2.4e-7 in the loss (one or two float32
# units in the last place at a loss of 2.3) and 1.2e-7 in any weight after 10 steps. They come
# from summing the same numbers in another order (two half-batch means, averaged by the
# all-reduce, instead of one mean). Feeding the ranks other samples, or logging rank 0's
# half-batch loss instead of the mean over the ranks, moves the loss by about 1e-2.
LOSS_TOL = 1e-5
WEIGHT_TOL = 1e-5
# A resumed run repeats the uninterrupted one operation for operation: measured identical.
RESUME_TOL = 1e-6
TIMEOUT_S = 180

TINY = [
    "--seed_everything=0",
    TASK_MODEL,
    *TINY_BACKBONE,
    "--model.kernels=off",
    # A constant learning rate: the schedule would otherwise depend on max_steps, and the
    # interrupted run (max_steps=STOP_AT, then MAX_STEPS) could not match the uninterrupted one.
    "--model.lr=1e-2",
    "--model.warmup_steps=0",
    "--model.min_lr_ratio=1",
    "--trainer.accelerator=cpu",
    "--trainer.limit_val_batches=0",
    "--trainer.log_every_n_steps=1",
    *QUIET,
]
DATA = [*TINY_DATA, f"--data.num_train_samples={SAMPLES}"]
# Set by a launcher such as torchrun or a cluster; inherited, they would join another job.
RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "RANK")


@dataclass
class Start:
    """One `fit` start: rank 0's process id (the one we launched) and what it printed."""

    pid: int
    output: str


def start(root: Path, run_id: str, devices: int, batch_size: int, max_steps: int):
    command = [
        *[sys.executable, "-m", PACKAGE, "fit", *TINY, *DATA],
        f"--data.batch_size={batch_size}",
        f"--trainer.devices={devices}",
        f"--trainer.max_steps={max_steps}",
        f"--run.id={run_id}",
        f"--run.root={root}",
    ]
    if devices > 1:
        command.append("--trainer.strategy=ddp")
    env = {k: v for k, v in os.environ.items() if k not in RENDEZVOUS}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT / "src"), env.get("PYTHONPATH")]))
    # One thread per process: the runs share the cores, and every run sums in the same order.
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.Popen(
        command,
        cwd=root,  # anything written to the working directory would show up in the file test
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # one process group with the rank Lightning starts
    )


def finish(process: subprocess.Popen) -> Start:
    try:
        output, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # rank 0 and the rank it started
        output, _ = process.communicate()
        pytest.fail(f"`fit` did not finish in {TIMEOUT_S} s:\n{output[-4000:]}")
    assert process.returncode == 0, output[-4000:]
    return Start(process.pid, output)


@dataclass
class Runs:
    root: Path
    one: Start  # 1 process, batch 2 * BATCH, MAX_STEPS
    two: Start  # 2 processes, batch BATCH, MAX_STEPS
    stopped: Start  # 2 processes, batch BATCH, STOP_AT ...
    resumed: Start  # ... then the same run id again, MAX_STEPS
    stopped_step: int  # global step in last.ckpt after the first start


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    root = tmp_path_factory.mktemp("ddp")
    launched = [
        start(root, "one", devices=1, batch_size=2 * BATCH, max_steps=MAX_STEPS),
        start(root, "two", devices=2, batch_size=BATCH, max_steps=MAX_STEPS),
        start(root, "resumed", devices=2, batch_size=BATCH, max_steps=STOP_AT),
    ]
    try:
        one, two, stopped = [finish(process) for process in launched]
        stopped_step = checkpoint(root, "resumed")["global_step"]
        launched.append(start(root, "resumed", devices=2, batch_size=BATCH, max_steps=MAX_STEPS))
        resumed = finish(launched[-1])
    finally:
        for process in launched:  # left running only when a run above failed
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    return Runs(root, one, two, stopped, resumed, stopped_step)


def checkpoint(root: Path, run_id: str) -> dict:
    path = root / run_id / "checkpoints" / "last.ckpt"
    return torch.load(path, map_location="cpu", weights_only=False)


def logged_losses(path: Path) -> list[tuple[int, float]]:
    """(step, train/loss) as TensorBoard shows them: of one event file, or of a run folder."""
    events = EventAccumulator(str(path))
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars("train/loss")]


def event_files(root: Path, run_id: str) -> dict[int, Path]:
    """The run's TensorBoard event files by the id of the process that wrote each.

    TensorBoard names them `events.out.tfevents.<time>.<host>.<pid>.<n>`.
    """
    found = {}
    for path in (root / run_id).rglob("events.out.tfevents.*"):
        pid = int(path.name.split(".")[-2])
        assert pid not in found, f"one process wrote two event files: {path}"
        found[pid] = path
    return found


def other_files(root: Path, run_id: str) -> list[str]:
    """Every file of the run but the event files, relative to the run folder."""
    paths = sorted(p for p in (root / run_id).rglob("*") if p.is_file())
    return [p.relative_to(root / run_id).as_posix() for p in paths if "tfevents" not in p.name]


def assert_same_weights(first: dict, second: dict, atol: float) -> None:
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], atol=atol, rtol=0, msg=name)


def test_two_processes_follow_the_loss_curve_of_one_process_with_twice_the_batch(runs):
    assert "Starting with 2 processes" in runs.two.output
    one = logged_losses(runs.root / "one")
    two = logged_losses(runs.root / "two")
    assert [step for step, _ in one] == [step for step, _ in two] == list(range(MAX_STEPS))
    for (step, expected), (_, got) in zip(one, two, strict=True):
        assert got == pytest.approx(expected, abs=LOSS_TOL, rel=0), f"step {step}"
    # The curve moves by far more than the tolerance from step to step, so a curve that is off
    # by one step, or flat, cannot pass.
    moves = [abs(b - a) for (_, a), (_, b) in zip(one, one[1:], strict=False)]
    assert min(moves) > 20 * LOSS_TOL
    assert_same_weights(
        checkpoint(runs.root, "one")["state_dict"],
        checkpoint(runs.root, "two")["state_dict"],
        WEIGHT_TOL,
    )


def test_a_ddp_run_resumes_from_last_ckpt_and_ends_where_an_uninterrupted_one_does(runs):
    assert runs.stopped_step == STOP_AT < STEPS_PER_EPOCH  # stopped mid-epoch
    last = runs.root / "resumed" / "checkpoints" / "last.ckpt"
    assert "resuming" not in runs.stopped.output
    assert f"resuming from {last}" in runs.resumed.output
    assert runs.resumed.output.count("resuming from") == 1  # printed by rank 0 only

    # The second start trained only the steps that were left.
    second = event_files(runs.root, "resumed")[runs.resumed.pid]
    assert [step for step, _ in logged_losses(second)] == list(range(STOP_AT, MAX_STEPS))

    resumed, uninterrupted = checkpoint(runs.root, "resumed"), checkpoint(runs.root, "two")
    assert resumed["global_step"] == MAX_STEPS
    losses = logged_losses(runs.root / "resumed")
    assert [step for step, _ in losses] == list(range(MAX_STEPS))  # no gap, no step twice
    for (step, got), (_, expected) in zip(losses, logged_losses(runs.root / "two"), strict=True):
        assert got == pytest.approx(expected, abs=RESUME_TOL, rel=0), f"step {step}"
    # Equal weights also need every rank to have resumed its optimizer state and its place in
    # the data: a rank that started afresh would change the gradients from step STOP_AT on.
    assert_same_weights(resumed["state_dict"], uninterrupted["state_dict"], RESUME_TOL)


def test_only_rank_zero_writes_checkpoints_and_logs(runs):
    assert sorted(p.name for p in runs.root.iterdir()) == ["one", "resumed", "two"]
    # The same files as one process writes: nothing twice, nothing per rank.
    two = other_files(runs.root, "two")
    assert two == other_files(runs.root, "one")
    assert "checkpoints/last.ckpt" in two
    # Two starts may add the fallback copy of last.ckpt that the CLI keeps, nothing else.
    assert set(other_files(runs.root, "resumed")) - set(two) <= {"checkpoints/previous.ckpt"}
    # Rank 0 is the process each test started; the rank Lightning starts has another pid.
    assert event_files(runs.root, "one").keys() == {runs.one.pid}
    assert event_files(runs.root, "two").keys() == {runs.two.pid}
    assert event_files(runs.root, "resumed").keys() == {runs.stopped.pid, runs.resumed.pid}
