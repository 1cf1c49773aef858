{% if cookiecutter.task == 'language_model' -%}
"""The commands off the happy path: predict writes its predictions, test reads a split that
validation never sees, generate and export keep a run's tokenizer, a fit of no steps leaves no
run behind, and a mistyped command lists every command."""
{%- else -%}
"""The commands off the happy path: predict writes its predictions, test reads a split that
validation never sees, a fit of no steps leaves no run behind, and a mistyped command lists
every command."""
{%- endif %}

import json
from pathlib import Path

import pytest
{%- if cookiecutter.task == 'language_model' %}
from conftest import CORPUS, PACKAGE, TINY, TINY_COPYING, bpe_tokenizer
{%- else %}
from conftest import TINY_CLASSIFIER, TINY_SERIES
{%- endif %}

from {{ cookiecutter.package_name }}.cli import COMMAND_LIST, main
{%- if cookiecutter.task == 'language_model' %}
from {{ cookiecutter.package_name }}.data import InductionHeads, SelectiveCopying, TextFile
{%- else %}
from {{ cookiecutter.package_name }}.data import SyntheticSeries
{%- endif %}

CPU = ["--trainer.accelerator=cpu", "--trainer.devices=1"]
RUNS = {  # run id -> the arguments of its model and data
{%- if cookiecutter.task == 'language_model' %}
    "copying": [*TINY, *TINY_COPYING, *CPU],
    "bpe": [*TINY, f"--data={PACKAGE}.data.TextFile", "--data.seq_len=16", *CPU]
    + ["--data.path={root}/corpus.txt", "--data.tokenizer={root}/tokenizer.json"],
{%- else %}
    "series": [*TINY_CLASSIFIER, *TINY_SERIES, *CPU],
{%- endif %}
}
TASK_RUN = "{{ 'copying' if cookiecutter.task == 'language_model' else 'series' }}"  # of the task this project was made for


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
{%- if cookiecutter.task == 'language_model' %}
    """A language model of bytes and one of a 300-token BPE tokenizer, each after two steps
    of fit."""
    root = tmp_path_factory.mktemp("runs")
    (root / "corpus.txt").write_text(CORPUS)
    bpe_tokenizer(root / "tokenizer.json")
{%- else %}
    """A classifier after two steps of fit."""
    root = tmp_path_factory.mktemp("runs")
{%- endif %}
    for run_id, args in RUNS.items():
        args = [arg.format(root=root) for arg in args]
        main(["fit", *args, "--trainer.max_steps=2", f"--run.root={root}", f"--run.id={run_id}"])
    return root


def predict(runs: Path, run_id: str) -> list[dict]:
    ckpt = runs / run_id / "checkpoints" / "last.ckpt"
    main(["predict", *RUNS[run_id], f"--ckpt_path={ckpt}", f"--run.root={runs}"])
    path = runs / run_id / "predictions" / "last.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]
{%- if cookiecutter.task == 'language_model' %}


def test_predict_writes_each_samples_next_token_predictions_beside_the_run(runs, caplog):
    rows = predict(runs, "copying")
    assert [row["index"] for row in rows] == list(range(8))  # num_val_samples, in order
    for row in rows:  # the 4 copied tokens: what the model says, and what was there
        assert len(row["predicted"]) == len(row["target"]) == 4
        assert all(0 <= token < 10 for token in row["predicted"] + row["target"])
    assert f"wrote 8 predictions to {runs / 'copying' / 'predictions' / 'last.jsonl'}" in (
        caplog.text
    )
{%- else %}


def test_predict_writes_each_series_class_and_probabilities(runs):
    rows = predict(runs, "series")
    assert len(rows) == 8  # num_val_samples
    for row in rows:
        assert set(row) == {"index", "class", "probabilities", "label"}
        assert sum(row["probabilities"]) == pytest.approx(1, abs=1e-5)
        assert row["class"] == max(range(2), key=row["probabilities"].__getitem__)
{%- endif %}


@pytest.mark.parametrize(
    "data",
    [
{%- if cookiecutter.task == 'language_model' %}
        SelectiveCopying(seq_len=24, num_tokens=4),
        InductionHeads(seq_len=16),
    ],
    ids=["copying", "induction"],
{%- else %}
        SyntheticSeries(seq_len=48, num_classes=2),
    ],
    ids=["series"],
{%- endif %}
)
def test_generated_tasks_test_on_samples_that_validation_never_sees(data):
    val, test = data.dataset("val"), data.dataset("test")
    assert len(test) == len(val)
    seen = {tuple(val[i][0].flatten().tolist()) for i in range(len(val))}
    assert not any(tuple(test[i][0].flatten().tolist()) in seen for i in range(len(test)))
{%- if cookiecutter.task == 'language_model' %}


def test_text_holds_out_its_last_test_fraction_for_test(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(bytes(range(32, 127)) * 20)  # 1900 bytes
    data = TextFile(str(path), seq_len=8, val_fraction=0.1, test_fraction=0.1)
    data.setup()
    assert data.bounds == {"train": (0, 1520), "val": (1520, 1710), "test": (1710, 1900)}
    assert data.has_test_split() and not TextFile(str(path), seq_len=8).has_test_split()
{%- endif %}


def test_test_reports_the_test_split_not_validation_again(runs):
    ckpt = runs / TASK_RUN / "checkpoints" / "last.ckpt"
    args = [*RUNS[TASK_RUN], f"--ckpt_path={ckpt}", f"--run.root={runs}"]
    val = main(["validate", *args]).trainer.callback_metrics
    test = main(["test", *args]).trainer.callback_metrics
    assert float(test["test/loss"]) != float(val["val/loss"])


def test_a_mistyped_command_lists_every_command(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["fitt"])
    assert stopped.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: 'fitt' is not a command; did you mean fit?")
    assert all(command in line for command in COMMAND_LIST) and len(COMMAND_LIST) == {{ 8 if cookiecutter.task == 'language_model' else 5 }}
{%- if cookiecutter.task == 'language_model' %}


def generate(*args: str) -> int:
    with pytest.raises(SystemExit) as stopped:
        main(["generate", *args, "--prompt=the cat", "--max_new_tokens=3"])
        raise SystemExit(0)
    return stopped.value.code
{%- endif %}


@pytest.mark.parametrize(
    ("command", "options"),
    [
{%- if cookiecutter.task == 'language_model' %}
        ("generate", "prompt: [a]\nmax_new_tokens: 2\n"),
        ("export", "format: hf\nout: exported\n"),
{%- endif %}
        ("extrapolate", "lengths: 2^6..2^8\nsamples: 4\n"),
        ("extrapolate", "lengths: [64, 256]\n"),
    ],
)
def test_each_command_takes_its_options_from_a_config_file(command, options, tmp_path, capsys):
    """The options reach the command from the file: its checkpoint is the one refused."""
    missing = tmp_path / "missing.ckpt"
    config = tmp_path / f"{command}.yaml"
    config.write_text(f"ckpt_path: {missing}\n{options}")
    with pytest.raises(SystemExit) as stop:
        main([command, f"--config={config}"])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert err == f"error: --ckpt_path={missing}: no such file; give a .ckpt written by fit\n"
    assert not (Path.cwd() / "exported").exists()
{%- if cookiecutter.task == 'language_model' %}


def test_generate_refuses_a_tokenizer_other_than_the_models_own(runs, capsys):
    ckpt = runs / "bpe" / "checkpoints" / "last.ckpt"
    assert generate(f"--ckpt_path={ckpt}", "--tokenizer=bytes") == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == (
        f"error: --tokenizer=bytes is not the tokenizer this model was trained with "
        f"({runs / 'tokenizer.json'}); leave --tokenizer out to use that one"
    )
    assert generate(f"--ckpt_path={ckpt}", f"--tokenizer={runs / 'tokenizer.json'}") == 0


@pytest.mark.parametrize("format", ["hf", "mamba_ssm"])
def test_export_ships_the_runs_tokenizer_and_the_folder_generates_with_it(
    format, runs, tmp_path, capsys
):
    out = tmp_path / "exported"
    ckpt = runs / "bpe" / "checkpoints" / "last.ckpt"
    main(["export", f"--ckpt_path={ckpt}", f"--format={format}", f"--out={out}"])
    assert (out / "tokenizer.json").read_bytes() == (runs / "tokenizer.json").read_bytes()
    assert "with its tokenizer.json" in capsys.readouterr().out
    assert generate(f"--pretrained={out}") == 0
    from_folder = capsys.readouterr().out
    assert generate(f"--ckpt_path={ckpt}") == 0
    assert capsys.readouterr().out == from_folder  # the same ids, decoded the same way
    assert generate(f"--pretrained={out}", "--tokenizer=bytes") == 2
{%- endif %}


@pytest.mark.parametrize("limit", ["--trainer.max_steps=0", "--trainer.max_epochs=0"])
def test_a_fit_that_trains_no_step_leaves_no_run_and_names_no_checkpoint(limit, tmp_path, caplog):
    root = tmp_path / "runs"
    main(["fit", *RUNS[TASK_RUN], limit, f"--run.root={root}", "--run.id=none"])
    assert not root.exists(), sorted(root.rglob("*"))
    assert "run none: finished at step 0" in caplog.text
    assert "last checkpoint" not in caplog.text and "curves" not in caplog.text
