"""Nothing is lost: kill -9, Ctrl-C/SIGTERM, max_time, early stopping, damaged checkpoints.

The kill tests start `python -m {{ cookiecutter.package_name }} fit` as a real process, stop it at
a random moment after it wrote a checkpoint, start the same command again, and compare the
finished run with one that was never interrupted: weights, optimizer-driven training curve and
validation metrics must be identical, which also proves that the resumed run saw the same
batches (data order and position restored) and that TensorBoard continued the same curve.
"""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PACKAGE, PROJECT, TASK_MODEL, TINY_BACKBONE, TINY_DATA
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from {{ cookiecutter.package_name }}.cli import main
from {{ cookiecutter.package_name }}.data import {{ 'SelectiveCopying' if cookiecutter.task == 'language_model' else 'SyntheticSeries' }}
from {{ cookiecutter.package_name }}.machinery.runs import (
    LAST,
    PREVIOUS,
    AtomicCheckpointIO,
    FlushedTensorBoardLogger,
    LastCheckpoint,
)

MAX_STEPS = 200
# Tiny and deterministic on CPU (~1 s of training): 24 batches per epoch, so a run crosses
# epoch boundaries and is stopped both mid-epoch and between epochs.
FIT = [
    "fit",
    "--seed_everything=0",
    TASK_MODEL,
    *TINY_BACKBONE,
    "--model.warmup_steps=10",
    *TINY_DATA,
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    f"--trainer.max_steps={MAX_STEPS}",
    "--trainer.val_check_interval=25",
    "--trainer.check_val_every_n_epoch=null",
    "--trainer.log_every_n_steps=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


def fit_process(root: Path, run_id: str, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", PACKAGE, *FIT, f"--run.root={root}", f"--run.id={run_id}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same threads, same floating-point sums
    return subprocess.Popen(
        [*command, *extra],
        cwd=PROJECT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def checkpoint_step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


def wait_for_new_checkpoint(path: Path, since: float, process: subprocess.Popen) -> None:
    """Block until `process` has written `path` after time `since`."""
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if path.stat().st_mtime > since:
                return
        except FileNotFoundError:  # not written yet, or being replaced this instant
            pass
        if process.poll() is not None:
            output = process.stdout.read()
            pytest.fail(f"fit exited with {process.returncode} before a checkpoint:\n{output}")
        time.sleep(0.01)
    process.kill()
    pytest.fail(f"no checkpoint at {path} within 120 s")


def finished_run(root: Path, run_id: str) -> dict:
    """Weights of the final last.ckpt and every logged scalar, as TensorBoard shows them."""
    state = torch.load(root / run_id / "checkpoints" / LAST, map_location="cpu", weights_only=False)
    events = EventAccumulator(str(root / run_id))
    events.Reload()
    scalars = {
        tag: [(event.step, event.value) for event in events.Scalars(tag)]
        for tag in ("train/loss", "val/loss", "val/acc")
    }
    return {"step": state["global_step"], "weights": state["state_dict"], "scalars": scalars}


def assert_same_run(got: dict, want: dict) -> None:
    assert got["step"] == want["step"] == MAX_STEPS
    assert got["weights"].keys() == want["weights"].keys()
    for name, tensor in want["weights"].items():
        assert torch.equal(got["weights"][name], tensor), f"{name} differs"
    for tag, curve in want["scalars"].items():
        assert got["scalars"][tag] == curve, f"{tag} differs"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("reference")
    process = fit_process(root, "run")
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    run = finished_run(root, "run")
    assert len(run["scalars"]["train/loss"]) == MAX_STEPS
    return run


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
def test_stopped_and_restarted_run_equals_an_uninterrupted_one(stop, uninterrupted, tmp_path):
    """Three stops at random moments after a checkpoint, then a run to the end."""
    rng = random.Random(int(stop))
    last = tmp_path / "run" / "checkpoints" / LAST
    # kill -9 can only lose what came after the last checkpoint, so checkpoint often; the
    # signals must save by themselves, so only validation writes checkpoints there.
    cadence = ["--run.checkpoint_minutes=0.0005"] if stop == signal.SIGKILL else []
    steps = [0]
    for _ in range(3):
        started = time.time()
        process = fit_process(tmp_path, "run", *cadence)
        wait_for_new_checkpoint(last, started, process)
        time.sleep(rng.uniform(0.0, 0.05))  # well before the next checkpoint
        signalled = time.time()
        process.send_signal(stop)
        output, _ = process.communicate(timeout=60)
        if stop == signal.SIGKILL:
            assert process.returncode == -signal.SIGKILL, output
        else:
            # Saved and exited non-zero (so a platform retries) well within Modal's 30 s grace.
            assert process.returncode == 128 + stop, output
            assert time.time() - signalled < 30
            assert f"stopped by {stop.name}; saved {last}" in output
            # The signal's checkpoint is newer than the validation checkpoint it replaced.
            assert checkpoint_step(last) > checkpoint_step(last.with_name(PREVIOUS))
        steps.append(checkpoint_step(last))
        assert "resuming from" in output or len(steps) == 2, output
    assert steps == sorted(steps) and steps[-1] < MAX_STEPS, steps

    process = fit_process(tmp_path, "run", *cadence)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    assert f"resuming from {last}" in output
    assert_same_run(finished_run(tmp_path, "run"), uninterrupted)


# kill -9 at the first moment anyone can see a new last.ckpt: the instant its rename lands.
KILL_WHEN_PUBLISHED = f"""
import os, signal, sys
from pathlib import Path
import torch
from {PACKAGE}.cli import main

replace = os.replace

def replace_then_die(src, dst):
    replace(src, dst)
    if Path(dst).name == "{LAST}":
        if torch.load(dst, weights_only=False)["global_step"] == int(sys.argv[1]):
            os.kill(os.getpid(), signal.SIGKILL)

os.replace = replace_then_die
main(sys.argv[2:])
"""


@pytest.mark.parametrize("step", [30, 25], ids=["mid-interval", "validation-step"])
def test_kill_9_the_instant_last_ckpt_appears_loses_no_logged_step(step, uninterrupted, tmp_path):
    """The random kills above, at their worst moment: as the checkpoint of `step` appears.

    Lightning logs a step's metrics after the callbacks' on_train_batch_end, where the
    time-based checkpoint is taken, and validates after that; a run resumed from that
    checkpoint does not validate at its step again. Were it visible before the step's loss (or
    its validation) is logged, the restart would leave that point out of TensorBoard for good.
    """
    every_step = "--run.checkpoint_minutes=0.00001"  # the timed checkpoint at every step
    command = [sys.executable, "-c", KILL_WHEN_PUBLISHED, str(step), *FIT]
    command.append(f"--run.root={tmp_path}")
    first = subprocess.run(
        [*command, "--run.id=run", every_step], cwd=PROJECT,
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert first.returncode == -signal.SIGKILL, first.stdout + first.stderr
    last = tmp_path / "run" / "checkpoints" / LAST
    assert checkpoint_step(last) == step
    process = fit_process(tmp_path, "run")
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    assert f"resuming from {last}" in output
    assert_same_run(finished_run(tmp_path, "run"), uninterrupted)


EARLY_STOPPING = [  # stops at the second validation (step 50): no improvement of 1.0
    "--trainer.callbacks+=lightning.pytorch.callbacks.EarlyStopping",
    "--trainer.callbacks.monitor=val/loss",
    "--trainer.callbacks.patience=0",
    "--trainer.callbacks.min_delta=1.0",
]


def test_run_ended_by_early_stopping_continues_where_it_stopped(uninterrupted, tmp_path):
    """EarlyStopping ends a run at a validation; without the callback the run goes on."""
    first = fit_process(tmp_path, "run", *EARLY_STOPPING)
    output, _ = first.communicate(timeout=300)
    assert first.returncode == 0, output
    stopped = checkpoint_step(tmp_path / "run" / "checkpoints" / LAST)
    assert 0 < stopped < MAX_STEPS, output
    second = fit_process(tmp_path, "run")
    output, _ = second.communicate(timeout=300)
    assert second.returncode == 0, output
    assert f"resuming from {tmp_path / 'run' / 'checkpoints' / LAST}" in output
    assert_same_run(finished_run(tmp_path, "run"), uninterrupted)


# max_time's own check, deciding by step instead of by the clock, so that the test picks where
# the run stops: Lightning's Timer callback stays where it is among the callbacks.
STOP_AT_STEP = f"""
import sys
from lightning.pytorch.callbacks.timer import Timer
from {PACKAGE}.cli import main

def check_time_remaining(self, trainer):
    trainer.should_stop = trainer.should_stop or trainer.global_step >= int(sys.argv[1])

Timer._check_time_remaining = check_time_remaining
main(sys.argv[2:])
"""


def test_run_ended_by_max_time_continues_where_it_stopped(uninterrupted, tmp_path):
    """max_time stops the run after step 48, the last batch of an epoch; then it goes on.

    A checkpoint at an epoch's last batch would resume on the wrong batches, so the stop is
    carried to the next step (49), which is saved mid-epoch like any other stop. Lightning
    validates once more when a run stops: the stopped run adds that one validation point.
    """
    command = [sys.executable, "-c", STOP_AT_STEP, "48", *FIT, f"--run.root={tmp_path}"]
    command += ["--run.id=run", "--trainer.max_time=00:01:00:00"]
    first = subprocess.run(
        command, cwd=PROJECT, env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert first.returncode == 0, first.stdout + first.stderr
    assert checkpoint_step(tmp_path / "run" / "checkpoints" / LAST) == 49
    process = fit_process(tmp_path, "run")
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    got = finished_run(tmp_path, "run")
    for tag in ("val/loss", "val/acc"):  # the stop's validation, logged at the index of step 49
        assert 48 in [step for step, _ in got["scalars"][tag]]
        got["scalars"][tag] = [(step, v) for step, v in got["scalars"][tag] if step != 48]
    assert_same_run(got, uninterrupted)


def test_every_logged_step_is_in_the_event_file_at_once(tmp_path):
    """What a kill -9 leaves of the TensorBoard log: every step logged so far.

    Lightning's stock logger holds the last events in a queue (here steps 5 and 6 of 7); a run
    killed then and resumed from a checkpoint at step 6 would never log them again.
    """
    logger = FlushedTensorBoardLogger(save_dir=str(tmp_path), name="", version="")
    for step in range(7):
        logger.log_metrics({"train/loss": 1.5 + step, "train/acc": 0.1, "lr": 1e-3}, step=step)
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [event.step for event in events.Scalars("train/loss")] == list(range(7))


def forty_samples():
    """The project's task in 10 batches of 4."""
{%- if cookiecutter.task == 'language_model' %}
    return SelectiveCopying(seq_len=12, num_tokens=2, batch_size=4, num_train_samples=40)
{%- else %}
    return SyntheticSeries(seq_len=48, num_classes=2, batch_size=4, num_train_samples=40)
{%- endif %}


def test_resumed_loader_continues_mid_epoch_with_the_same_batches():
    data = forty_samples()
    loader = data.train_dataloader()
    batches = iter(loader)
    for _ in range(3):
        next(batches)
    state = loader.state_dict()
    rest = [inputs for inputs, _ in batches]
    resumed = forty_samples()
    loader = resumed.train_dataloader()
    loader.load_state_dict(state)
    again = [inputs for inputs, _ in loader]
    assert len(again) == len(rest) == 7
    assert all(torch.equal(a, b) for a, b in zip(again, rest, strict=True))


def test_checkpoints_carry_the_random_number_generators():
    saver = LastCheckpoint(Path("unused"))
    torch.manual_seed(1)
    state = saver.state_dict()
    expected = torch.rand(3), np.random.rand(), random.random()
    torch.manual_seed(2)
    np.random.seed(2)
    LastCheckpoint(Path("unused")).load_state_dict(state)
    assert torch.equal(torch.rand(3), expected[0])
    assert (np.random.rand(), random.random()) == expected[1:]


def tiny_fit(root: Path, *extra: str) -> list[str]:
    return [*FIT, f"--run.root={root}", "--run.id=run", "--trainer.max_steps=6", *extra]


def test_unreadable_last_checkpoint_falls_back_to_the_previous_one_with_a_warning(tmp_path):
    main(tiny_fit(tmp_path, "--run.checkpoint_minutes=0.00001"))
    checkpoints = tmp_path / "run" / "checkpoints"
    last = checkpoints / LAST
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a torn write
    with pytest.warns(UserWarning, match=r"last\.ckpt is unreadable .*resuming from .*previous"):
        cli = main(tiny_fit(tmp_path, "--trainer.max_steps=9"))
    assert cli.config_init.fit.ckpt_path == str(checkpoints / PREVIOUS)
    assert cli.trainer.global_step == 9
    assert checkpoint_step(last) == 9


def test_no_readable_checkpoint_stops_instead_of_starting_over(tmp_path, capsys):
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / LAST).write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as stopped:
        main(tiny_fit(tmp_path))
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert "last.ckpt is unreadable" in error and "--ckpt_path" in error and "--run.id" in error
    assert sorted(p.name for p in checkpoints.iterdir()) == [LAST]  # nothing trained or written


def test_checkpoint_write_interrupted_midway_leaves_the_old_file(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / LAST
    io.save_checkpoint({"step": 1}, path)

    def torn_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    io.save_checkpoint({"step": 3}, path)
    assert torch.load(path, weights_only=True) == {"step": 3}
    assert torch.load(tmp_path / PREVIOUS, weights_only=True) == {"step": 1}


def test_a_held_save_replaces_the_old_file_only_when_published(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / LAST
    io.save_checkpoint({"step": 1}, path)
    io.hold()
    io.save_checkpoint({"step": 2}, path)
    assert torch.load(path, weights_only=True) == {"step": 1}
    io.publish()
    assert torch.load(path, weights_only=True) == {"step": 2}
    assert torch.load(tmp_path / PREVIOUS, weights_only=True) == {"step": 1}
    io.hold()
    io.save_checkpoint({"step": 3}, path)
    io.discard()  # training failed before the step's metrics were logged
    assert torch.load(path, weights_only=True) == {"step": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == [LAST, PREVIOUS]


def test_no_token_from_the_environment_reaches_a_file(tmp_path, monkeypatch):
    secret = "hf_" + "x7Q" * 10
    for name in ("HF_TOKEN", "WANDB_API_KEY", "MODAL_TOKEN_SECRET"):
        monkeypatch.setenv(name, secret)
    main(tiny_fit(tmp_path))
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == LAST for p in written) and any(p.suffix == ".yaml" for p in written)
    for path in written:
        assert secret.encode() not in path.read_bytes(), path
