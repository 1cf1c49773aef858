"""A run's folder is safe: one process at a time, last.ckpt complete at every instant, a stop
saved whatever happens to stdout, and the commands that only read a run write nothing."""

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import PACKAGE, PROJECT, TASK_MODEL, TINY_BACKBONE, TINY_DATA, TINY_MODEL

from {{ cookiecutter.package_name }}.cli import main
from {{ cookiecutter.package_name }}.machinery import runs

DATA = [
    "--seed_everything=0",
    *TINY_DATA,
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
]


def fit_process(root: Path, run_id: str, *extra: str, **popen) -> subprocess.Popen:
    command = [sys.executable, "-m", PACKAGE, "fit", *TINY_MODEL, *DATA]
    command += [f"--run.root={root}", f"--run.id={run_id}", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, cwd=PROJECT, env=env, text=True, **popen)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    """Block until `path` exists with content (the test fails if `process` ends first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.stat().st_size > 0:
            return
        if process.poll() is not None:
            pytest.fail(f"fit exited with {process.returncode} before {path} appeared")
        time.sleep(0.05)
    process.kill()
    pytest.fail(f"{path} did not appear within {timeout} s")


def test_last_ckpt_is_complete_when_a_save_is_cut_before_its_final_rename(tmp_path, monkeypatch):
    """kill -9 can land between any two steps of a save; the one that matters is after the
    old last.ckpt got its second name (previous.ckpt) and before the new one takes its place."""
    io = runs.AtomicCheckpointIO()
    last = tmp_path / runs.LAST
    io.save_checkpoint({"step": 1}, last)
    real_replace = os.replace

    def killed_before_the_final_rename(src, dst):
        if Path(dst) == last:
            raise KeyboardInterrupt("killed")
        real_replace(src, dst)

    monkeypatch.setattr(runs.os, "replace", killed_before_the_final_rename)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, last)
    assert torch.load(last, weights_only=True) == {"step": 1}  # still there, still whole
    assert torch.load(last.with_name(runs.PREVIOUS), weights_only=True) == {"step": 1}
    monkeypatch.setattr(runs.os, "replace", real_replace)
    io.save_checkpoint({"step": 3}, last)
    assert torch.load(last, weights_only=True) == {"step": 3}
    assert torch.load(last.with_name(runs.PREVIOUS), weights_only=True) == {"step": 1}


def test_a_second_start_of_a_running_run_is_refused_and_a_kill_9_leaves_no_stale_lock(
    tmp_path,
):
    first = fit_process(tmp_path, "busy", "--trainer.max_steps=100000")
    lock = tmp_path / "busy" / ".lock"
    wait_for(lock, first)
    try:
        second = subprocess.run(
            [sys.executable, "-m", PACKAGE, "fit", *TINY_MODEL, *DATA, "--trainer.max_steps=2"]
            + [f"--run.root={tmp_path}", "--run.id=busy"],
            cwd=PROJECT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert second.returncode == 2, second.stderr
        errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in second.stderr, second.stderr
        assert errors[0].startswith("error: run busy is being trained by"), errors
        assert f"pid {first.pid} on " in errors[0] and "another --run.id" in errors[0]
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    third = fit_process(tmp_path, "busy", "--trainer.max_steps=2")
    assert third.wait(timeout=300) == 0  # the lock died with its holder


def test_ctrl_c_after_the_output_pipe_closed_still_saves_last_ckpt(tmp_path):
    """`fit ... | tee log` and Ctrl-C: tee is gone when the run announces its stop."""
    process = fit_process(
        tmp_path, "piped", "--trainer.max_steps=100000", "--trainer.val_check_interval=2",
        stdout=subprocess.PIPE,
    )  # fmt: skip
    # inside the training loop, however slow the machine: its first validation has saved
    wait_for(tmp_path / "piped" / "checkpoints" / runs.LAST, process)
    process.stdout.close()  # the reader of stdout is gone
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 128 + signal.SIGINT
    last = tmp_path / "piped" / "checkpoints" / runs.LAST
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] > 0


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    args = ["fit", *TINY_MODEL, *DATA, "--trainer.max_steps=4", "--trainer.val_check_interval=2"]
    main([*args, f"--run.root={root}", "--run.id=done"])
    return root


def listing(root: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*")}


@pytest.mark.parametrize("command", ["validate", "test", "predict"])
def test_commands_that_read_a_checkpoint_write_nothing(command, trained, tmp_path, monkeypatch):
    """...but predict's predictions, beside the run whose checkpoint it read."""
    monkeypatch.chdir(tmp_path)
    before = listing(trained)
    ckpt = trained / "done" / "checkpoints" / "best.ckpt"
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        cli = main([command, *TINY_MODEL, *DATA, f"--ckpt_path={ckpt}", f"--run.root={trained}"])
    assert cli.trainer.state.finished
    added = {p for p in listing(trained) if p not in before}
    predictions = trained / "done" / "predictions"
    expected = {predictions, predictions / "best.jsonl"} if command == "predict" else set()
    assert added == expected and not any(tmp_path.iterdir())
    now = listing(trained)  # the run folder's own time changes when predictions/ appears in it
    assert all(now[p] == t for p, t in before.items() if p != predictions.parent)
    assert not [w for w in said if "callbacks used to create the checkpoint" in str(w.message)]


def test_fit_with_a_checkpoint_of_another_size_stops_instead_of_taking_its_config(
    trained, tmp_path, capsys
):
    ckpt = trained / "done" / "checkpoints" / runs.LAST
    args = ["fit", *TINY_MODEL, *DATA, "--model.net.backbone.d_model=32", f"--ckpt_path={ckpt}"]
    with pytest.raises(SystemExit) as stopped:
        main([*args, f"--run.root={tmp_path}"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds another model than this config builds" in err[0], err
    assert "{{ '(16, 16) there, (16, 32) here' if cookiecutter.task == 'language_model' else '(16, 4) there, (32, 4) here' }}" in err[0]
    assert not any(tmp_path.iterdir())


def test_fit_ends_with_a_summary_of_the_run(trained, caplog):
    args = ["fit", *TINY_MODEL, *DATA, "--trainer.max_steps=6", "--trainer.val_check_interval=2"]
    main([*args, f"--run.root={trained}", "--run.id=summary"])
    said = caplog.text
    assert "run summary: finished at step 6; last validation: val/acc" in said
    best = trained / "summary" / "checkpoints" / "best.ckpt"
    assert "best checkpoint (val/acc " in said and str(best) in said
    assert f"curves: tensorboard --logdir {trained / 'summary'}" in said
{%- if cookiecutter.task == 'language_model' %}


def test_best_ckpt_follows_run_monitor_at_another_length_and_a_tie_keeps_the_later(tmp_path):
    """data.val_lengths adds a loader named by its length; run.monitor picks best.ckpt by it.
    At lr 1e-9 the accuracy cannot move: every validation ties, and the later one is kept."""
    args = ["fit", *TINY_MODEL, *DATA, "--trainer.max_steps=4", "--trainer.val_check_interval=2"]
    args += ["--model.lr=1e-9", "--data.val_lengths=[48]", "--run.monitor=val/acc@48"]
    cli = main([*args, f"--run.root={tmp_path}", "--run.id=tie"])
    logged = cli.trainer.callback_metrics
    assert {"val/acc", "val/loss", "val/acc@48", "val/loss@48", "val/ppl@48"} <= set(logged)
    assert not [name for name in logged if "dataloader_idx" in name]
    best = torch.load(tmp_path / "tie" / "checkpoints" / "best.ckpt", weights_only=False)
    assert best["global_step"] == 4  # Lightning alone keeps the first of equal scores: step 2
    [chosen] = [c for c in cli.trainer.checkpoint_callbacks if getattr(c, "monitor", None)]
    assert chosen.monitor == "val/acc@48" and chosen.best_model_score == logged["val/acc@48"]
{%- endif %}


def test_help_names_the_command_and_every_subcommand():
    done = subprocess.run(
        [sys.executable, "-m", PACKAGE, "--help"], cwd=PROJECT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: python -m {PACKAGE} <command>")
    listed = [line.split()[0] for line in done.stdout.splitlines() if line.startswith("  ")]
{%- if cookiecutter.task == 'language_model' %}
    commands = ["fit", "validate", "test", "predict", "generate", "export", "extrapolate"]
    assert listed == [*commands, "evaluate"]
{%- else %}
    assert listed == ["fit", "validate", "test", "predict", "extrapolate"]
{%- endif %}
    for line in done.stdout.splitlines():  # whole lines, none cut short
        assert len(line) <= 100, line


def test_no_run_prints_lightnings_cloud_logger_tip(trained, caplog):
    main(["fit", *TINY_MODEL, *DATA, "--trainer.max_steps=1", f"--run.root={trained}"])
    assert "Tip" not in caplog.text and "litlogger" not in caplog.text


def test_checkpoints_carry_the_network_and_no_lightning_hyperparameters(trained):
    """LightningCLI merges a --ckpt_path's `hyper_parameters` over the config before any public
    hook (docs/design_decisions.md): our checkpoints give it nothing to merge."""
    saved = torch.load(trained / "done" / "checkpoints" / runs.LAST, weights_only=True)
    assert "hyper_parameters" not in saved
    assert saved["net"]["class"] == "{{ 'MambaLM' if cookiecutter.task == 'language_model' else 'MambaClassifier' }}"
    assert saved["net"]["config"]["backbone"]["d_model"] == 16


def test_progress_written_to_a_pipe_is_whole_lines_counted_from_the_run_step(tmp_path):
    """tqdm's bar in a file is one line of carriage returns; a pipe gets lines instead."""
    command = [sys.executable, "-m", PACKAGE, "fit", TASK_MODEL, *TINY_BACKBONE, *DATA]
    command += ["--trainer.enable_model_summary=false", "--trainer.limit_val_batches=0"]
    command += [f"--run.root={tmp_path}", "--run.id=lines"]
    for steps in (50, 100):  # the second start resumes at 50
        done = subprocess.run(
            [*command, f"--trainer.max_steps={steps}"],
            cwd=PROJECT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr
        assert "\r" not in done.stdout and max(map(len, done.stdout.splitlines())) < 200
    lines = [line for line in done.stdout.splitlines() if line.startswith("step ")]
    assert lines[0].startswith("step 100/100 | train/loss ") and "steps/s" in lines[0], lines


def test_the_terminal_bar_shows_the_training_loss_it_reads_when_it_draws():
    from {{ cookiecutter.package_name }}.machinery.progress import Bar

    trainer = SimpleNamespace(
        loggers=[],
        progress_bar_metrics={"val/loss": 1.5},
        callback_metrics={"train/loss": torch.tensor(2.5)},
    )
    assert Bar().get_metrics(trainer, None) == {"train/loss": 2.5, "val/loss": 1.5}


def test_resuming_under_another_number_of_processes_is_refused(trained, capsys):
    args = ["fit", *TINY_MODEL, *DATA, "--trainer.max_steps=6", "--trainer.strategy=ddp"]
    with pytest.raises(SystemExit) as stopped:
        main([*args, "--trainer.devices=2", f"--run.root={trained}", "--run.id=done"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was trained by 1 process(es) and this start has 2" in err[0], err
