"""`extrapolate`: a checkpoint of a generated task evaluated at lengths it was not trained at."""

import json
from pathlib import Path

import pytest
from conftest import PACKAGE, TINY_MODEL

from {{ cookiecutter.package_name }}.cli import main
from {{ cookiecutter.package_name }}.commands import parse_lengths

# A generated task of this project's kind: its class, then its seq_len.
TASK = [
{%- if cookiecutter.task == 'language_model' %}
    f"--data={PACKAGE}.data.InductionHeads",
    "--data.seq_len=32",
    "--data.num_symbols=4",
{%- else %}
    f"--data={PACKAGE}.data.SyntheticSeries",
    "--data.seq_len=48",
    "--data.num_classes=2",
{%- endif %}
]
TRAINED_AT = int(TASK[1].split("=")[1])  # its seq_len
DATA = ["--data.batch_size=8", "--data.num_train_samples=64", "--data.num_val_samples=24"]


def trained(tmp_path: Path) -> Path:
    args = ["fit", *TINY_MODEL, *TASK, *DATA, "--trainer.max_steps=16", "--run.id=ih"]
    main([*args, f"--run.root={tmp_path / 'runs'}"])
    return tmp_path / "runs" / "ih" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def task_ckpt(tmp_path_factory) -> Path:
    """One trained checkpoint of TASK for the tests that only read it."""
    return trained(tmp_path_factory.mktemp("trained"))


def test_lengths_take_lists_powers_and_ranges_of_powers():
    assert parse_lengths("2^6..2^8,100") == [64, 100, 128, 256]
    assert parse_lengths("300, 2^4") == [16, 300]


def test_at_the_trained_length_it_equals_validate_and_other_lengths_run(tmp_path, capsys):
    ckpt = trained(tmp_path)
    validate = main(
        ["validate", *TINY_MODEL, *TASK, *DATA, f"--ckpt_path={ckpt}", "--run.id=ih"]
        + [f"--run.root={tmp_path / 'runs'}"]
    )
    val_acc = float(validate.trainer.callback_metrics["val/acc"])
    out = tmp_path / "lengths.json"
    lengths = f"{TRAINED_AT},{2 * TRAINED_AT},{4 * TRAINED_AT}"
    main(
        ["extrapolate", f"--ckpt_path={ckpt}", f"--lengths={lengths}", "--samples=24"]
        + [f"--out={out}"]
    )
    report = json.loads(out.read_text())
    assert report["task"] == TASK[0].rsplit(".", 1)[1]
    assert report["lengths"][str(TRAINED_AT)] == pytest.approx(val_acc, abs=1e-6)
    assert set(report["lengths"]) == {str(TRAINED_AT), str(2 * TRAINED_AT), str(4 * TRAINED_AT)}
    assert all(0 <= acc <= 1 for acc in report["lengths"].values())
    assert f"{4 * TRAINED_AT:9d} |" in capsys.readouterr().out


def test_on_a_cpu_lengths_over_the_time_limit_are_projected_not_run(task_ckpt, tmp_path, capsys):
    out = tmp_path / "lengths.json"
    main(
        ["extrapolate", f"--ckpt_path={task_ckpt}", f"--lengths={TRAINED_AT},2^20", "--samples=8"]
        + [f"--out={out}", "--max_cpu_minutes=0.5"]
    )
    report = json.loads(out.read_text())
    assert list(report["lengths"]) == [str(TRAINED_AT)]
    minutes = report["skipped_projected_cpu_minutes"]["1048576"]
    assert minutes > 0.5  # 2^20 x 8 tokens at the measured rate of the trained length
    printed = capsys.readouterr().out
    assert "1048576 | not run: about" in printed and "run it on a GPU" in printed


BAD = {
    "not_a_length": (["--lengths=64,abc"], "'abc' is not a length"),
    "too_short": (["--lengths=2,64"], "must name lengths of at least 3"),
    "no_samples": (["--lengths=64", "--samples=0"], "--samples=0"),
    "out_folder_missing": (["--lengths=64", "--out=nowhere/x.json"], "its folder does not exist"),
    "unknown_option": (["--lengths=64", "--sample=3"], "unrecognized arguments: --sample=3"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_arguments_stop_with_one_line_and_write_nothing(
    case, task_ckpt, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    folders = (tmp_path, task_ckpt.parents[1])  # where we are, and the run's folder
    before = [sorted(folder.rglob("*")) for folder in folders]
    args, message = BAD[case]
    with pytest.raises(SystemExit) as stop:
        main(["extrapolate", f"--ckpt_path={task_ckpt}", *args])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert [sorted(folder.rglob("*")) for folder in folders] == before


def test_a_checkpoint_of_another_kind_of_data_or_none_is_refused_in_one_line(
    task_ckpt, tmp_path, capsys
):
    missing = tmp_path / "missing.ckpt"
    with pytest.raises(SystemExit):
        main(["extrapolate", f"--ckpt_path={missing}", "--lengths=64"])
    assert "no such file" in capsys.readouterr().err
    import torch

    saved = torch.load(task_ckpt, weights_only=False)
    other = "{{ 'TextFile' if cookiecutter.task == 'language_model' else 'ArrayClassification' }}"  # not generated
    saved["datamodule_hyper_parameters"]["_class_path"] = f"{PACKAGE}.data.{other}"
    torch.save(saved, tmp_path / "other.ckpt")
    with pytest.raises(SystemExit):
        main(["extrapolate", f"--ckpt_path={tmp_path / 'other.ckpt'}", "--lengths=64"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a generated task with a seq_len" in err[0], err
