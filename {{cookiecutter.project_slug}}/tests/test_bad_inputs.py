"""Every input a user can get wrong stops `fit` before training, with one line and exit code 2.

Arguments, data files and checkpoints: each case names a piece of the one-line message, which
says what was wrong, the value and what to do. No traceback, and nothing written: the run
folder does not exist afterwards. The cases run in-process (`cli.main`, fast); a few run as
a real process to check the exit code and stderr exactly as a shell sees them.
"""

import importlib.util
import logging
import subprocess
import sys
import zipfile
from pathlib import Path

{% if cookiecutter.task == 'sequence_classification' %}import numpy as np
{% endif %}import pytest
import torch
from conftest import {% if cookiecutter.task == 'sequence_classification' %}CLASSIFIER, {% endif %}PACKAGE, PROJECT, TASK_MODEL, TINY_BACKBONE, TINY_DATA
from lightning.pytorch.accelerators import CPUAccelerator, MPSAccelerator

from {{ cookiecutter.package_name }}.cli import main
from {{ cookiecutter.package_name }}.machinery.devices import float64_works

DATA = f"--data={PACKAGE}.data"
# A tiny run of the task this project was made for, on the CPU; each case changes one thing.
FIT = [
    "fit",
    "--seed_everything=0",
    TASK_MODEL,
    *TINY_BACKBONE,
    *TINY_DATA,
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.max_steps=2",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]

# --- arguments and configs: (extra arguments, piece of the message)
ARGUMENTS = {
    "d_model_not_divisible_into_heads": (
        ["--model.net.backbone.d_model=18"],
        "expand * d_model = 36 is not divisible by headdim=8",
    ),
    "heads_not_divisible_into_groups": (["--model.net.backbone.ngroups=3"], "ngroups=3"),
    "d_model_zero": (["--model.net.backbone.d_model=0"], "backbone.d_model=0 must be"),
    "d_state_zero": (["--model.net.backbone.d_state=0"], "backbone.d_state=0 must be"),
    "d_state_negative": (["--model.net.backbone.d_state=-4"], "backbone.d_state=-4 must be"),
    "d_conv_zero": (["--model.net.backbone.d_conv=0"], "backbone.d_conv=0 must be"),
    "expand_zero": (["--model.net.backbone.expand=0"], "backbone.expand=0 must be"),
    "headdim_zero": (["--model.net.backbone.headdim=0"], "backbone.headdim=0 must be"),
    "chunk_size_zero": (["--model.net.backbone.chunk_size=0"], "backbone.chunk_size=0 must be"),
    "n_layer_zero": (["--model.net.backbone.n_layer=0"], "backbone.n_layer=0 must be"),
    "d_intermediate_negative": (["--model.net.backbone.d_intermediate=-1"], "d_intermediate=-1"),
    "pad_vocab_multiple_zero": (
        ["--model.net.backbone.pad_vocab_size_multiple=0"],
        "pad_vocab_size_multiple=0 must be",
    ),
    "d_model_not_a_number": (["--model.net.backbone.d_model=abc"], "Got value: abc"),
    "d_model_a_fraction": (["--model.net.backbone.d_model=1.5"], "Got value: 1.5"),
    "unknown_impl": (["--model.net.backbone.impl=fast"], "Got value: fast"),
    "unknown_mixer": (["--model.net.backbone.mixer=Mamba4"], "Got value: Mamba4"),
    "unknown_backbone_key": (["--model.net.backbone.width=64"], "width"),
    "negative_lr": (["--model.lr=-0.1"], "model.lr=-0.1 must be > 0"),
    "zero_lr": (["--model.lr=0"], "model.lr=0.0 must be > 0"),
    "lr_not_a_number": (["--model.lr=fast"], "Got value: fast"),
    "negative_weight_decay": (["--model.weight_decay=-1"], "weight_decay=-1.0 must be >= 0"),
    "negative_warmup": (["--model.warmup_steps=-5"], "warmup_steps=-5 must be >= 0"),
    "min_lr_ratio_above_one": (["--model.min_lr_ratio=2"], "min_lr_ratio=2.0 must be in [0, 1]"),
{%- if cookiecutter.task == 'sequence_classification' %}
    "pooling_unknown": (["--model.net.pooling=max"], "Got value: max"),
{%- endif %}
    "unknown_kernel_policy": (["--model.kernels=sometimes"], "Got value: sometimes"),
{%- if cookiecutter.task == 'language_model' %}
    "unknown_network_option": (
        ["--model.net.tie_embedding=false"],
        "'tie_embedding' is not accepted; did you mean --model.net.tie_embeddings?",
    ),
{%- else %}
    "vocabulary_on_a_classifier": (["--model.net.vocab_size=3"], "'vocab_size' is not"),
{%- endif %}
    "run_id_with_a_path": (["--run.id=../other"], "run.id='../other': use only letters"),
    "run_id_with_a_space": (["--run.id=my run"], "run.id='my run': use only letters"),
    "run_id_starting_with_a_dot": (["--run.id=.hidden"], "run.id='.hidden': use only letters"),
    "run_id_too_long": ([f"--run.id={'r' * 129}"], "at most 128"),
    "checkpoint_minutes_zero": (["--run.checkpoint_minutes=0"], "checkpoint_minutes=0.0 must"),
    "checkpoint_minutes_negative": (["--run.checkpoint_minutes=-1"], "checkpoint_minutes=-1.0"),
    "unknown_run_key": (["--run.folder=x"], "run.folder"),
{%- if cookiecutter.task == 'language_model' %}
    "monitor_not_logged": (
        ["--data.val_lengths=[48]", "--run.monitor=val/acc@84"],
        "run.monitor: monitor='val/acc@84' is not a metric this run logs; did you mean val/acc@48?",
    ),
{%- else %}
    "monitor_not_logged": (
        ["--run.monitor=val/f2"],
        "run.monitor: monitor='val/f2' is not a metric this run logs; did you mean val/f1?",
    ),
{%- endif %}
    "monitor_mode_unknown": (["--run.mode=higher"], "Got value: higher"),
{%- if cookiecutter.task == 'language_model' %}
    "val_length_too_short": (["--data.val_lengths=[4]"], "num_tokens=4 does not fit in seq_len=4"),
    "copying_longer_than_context": (["--data.num_tokens=30"], "num_tokens=30 does not fit"),
    "copying_nothing": (["--data.num_tokens=0"], "num_tokens=0 gives nothing to copy"),
    "copying_one_symbol": (["--data.num_symbols=1"], "num_symbols=1 leaves nothing"),
{%- endif %}
    "batch_size_zero": (["--data.batch_size=0"], "batch_size=0 must be positive"),
    "num_workers_negative": (["--data.num_workers=-1"], "num_workers=-1 is negative"),
    "seed_negative": (["--data.seed=-3"], "seed=-3 is negative"),
    "no_train_samples": (["--data.num_train_samples=0"], "num_train_samples=0 must be"),
    "no_val_samples": (["--data.num_val_samples=0"], "num_val_samples=0 must be"),
    "unknown_data_class": ([f"{DATA}.Nope"], "has no attribute 'Nope'"),
{%- if cookiecutter.task == 'language_model' %}
    "induction_one_symbol": (
        [f"{DATA}.InductionHeads", "--data.num_symbols=1"],
        "num_symbols=1 leaves nothing to recall",
    ),
    "induction_too_short": (
        [f"{DATA}.InductionHeads", "--data.seq_len=2"],
        "seq_len=2 has no room",
    ),
{%- else %}
    "series_one_class": (
        [f"{DATA}.SyntheticSeries", "--data.num_classes=1", "--data.seq_len=128"],
        "num_classes=1 is not a classification",
    ),
    "series_too_short_for_its_classes": (
        [f"{DATA}.SyntheticSeries", "--data.num_classes=4", "--data.seq_len=48"],
        "num_classes=4 needs seq_len >= 96",
    ),
    "series_negative_noise": (
        [f"{DATA}.SyntheticSeries", "--data.noise=-1", "--data.seq_len=128"],
        "noise=-1.0 is negative",
    ),
    "series_no_channels": (
        [f"{DATA}.SyntheticSeries", "--data.num_channels=0", "--data.seq_len=128"],
        "num_channels=0 must be positive",
    ),
{%- endif %}
    "unknown_argument": (["--trainer.max_stepz=5"], "did you mean --trainer.max_steps?"),
    "unknown_model_option": (["--model.lrr=1e-3"], "did you mean --model.lr?"),
    "unknown_backbone_option": (
        ["--model.net.backbone.d_modle=3"],
        "--model.net.backbone.d_modle=3: unrecognized arguments: --backbone.d_modle=3; did "
        "you mean --model.net.backbone.d_model?",
    ),
    "float16_on_a_cpu": (
        ["--trainer.accelerator=cpu", "--trainer.precision=16-mixed"],
        "trainer.precision=16-mixed needs a CUDA GPU",
    ),
    "max_steps_not_a_number": (["--trainer.max_steps=many"], "Got value: many"),
    "no_devices": (["--trainer.devices=0"], "trainer: `Trainer(devices='0')` value is not a valid"),
    "missing_config_file": (["--config=configs/nope.yaml"], "nope.yaml"),
    "checkpoint_missing": (["--ckpt_path=no/such.ckpt"], "--ckpt_path=no/such.ckpt: no such file"),
}
if importlib.util.find_spec("torch_xla") is None:
    ARGUMENTS["tpu_without_torch_xla"] = (
        ["--trainer.accelerator=tpu"],
        "trainer: Requirement 'torch_xla",
    )
if not torch.cuda.is_available():
    ARGUMENTS["fused_without_cuda"] = (["--model.net.backbone.impl=fused"], "found no CUDA")
    ARGUMENTS["gpu_without_cuda"] = (
        ["--trainer.accelerator=gpu"],
        "trainer.accelerator=gpu needs a CUDA GPU and this machine has none",
    )


def text(folder: Path, name: str, content: bytes) -> str:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return str(path)


{%- if cookiecutter.task == 'sequence_classification' %}


def arrays(folder: Path, name: str, **named) -> str:
    path = folder / name
    np.savez(path, **named) if name.endswith(".npz") else np.save(path, named["x"])
    return str(path)


X = np.random.default_rng(0).normal(size=(20, 16, 2)).astype(np.float32)  # (N, L, C)
Y = np.arange(20) % 2
{%- endif %}


def corrupt_zip(folder: Path) -> str:
    path = folder / "other.ckpt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "not a checkpoint")
    return str(path)


def without_loops(folder: Path) -> str:
    path = folder / "weights.ckpt"
    torch.save({"state_dict": {}}, path)
    return str(path)


# --- data files and checkpoints: folder -> (extra arguments, piece of the message)
{%- if cookiecutter.task == 'language_model' %}
TEXT = [f"{DATA}.TextFile", "--data.seq_len=16"]
{%- else %}
ARRAYS = [f"{DATA}.ArrayClassification", "--data.num_classes=null"]  # not FIT's: the labels' own
{%- endif %}
FILES = {
{%- if cookiecutter.task == 'language_model' %}
    "text_missing": lambda d: (
        [*TEXT, f"--data.path={d}/nothing.txt"],
        "nothing.txt' does not exist",
    ),
    "text_not_utf8": lambda d: (
        [*TEXT, "--data.path=" + text(d, "latin1.txt", "café au lait ".encode("latin-1") * 9)],
        "latin1.txt is not UTF-8 at byte offset 3",
    ),
    "text_shorter_than_a_window": lambda d: (
        [*TEXT, "--data.path=" + text(d, "short.txt", b"a few words")],
        "fewer than one window of seq_len + 1 = 17",
    ),
    "text_empty": lambda d: ([*TEXT, "--data.path=" + text(d, "empty.txt", b"")], "is empty"),
    "text_folder_without_text": lambda d: (
        [*TEXT, "--data.path=" + str(Path(text(d, "corpus/image.png", b"\x89PNG")).parent)],
        "holds no files ending in .txt/.md",
    ),
    "text_val_fraction_zero": lambda d: (
        [*TEXT, "--data.path=" + text(d, "a.txt", b"x" * 100), "--data.val_fraction=0"],
        "val_fraction=0.0 is outside (0, 1)",
    ),
    "text_val_fraction_one": lambda d: (
        [*TEXT, "--data.path=" + text(d, "a.txt", b"x" * 100), "--data.val_fraction=1"],
        "val_fraction=1.0 is outside (0, 1)",
    ),
    "text_seq_len_zero": lambda d: (
        [*TEXT, "--data.path=" + text(d, "a.txt", b"x" * 100), "--data.seq_len=0"],
        "seq_len=0 must be positive",
    ),
{%- else %}
    "arrays_missing": lambda d: ([*ARRAYS, f"--data.path={d}/none.npz"], "does not exist"),
    "arrays_csv": lambda d: (
        [*ARRAYS, "--data.path=" + text(d, "x.csv", b"1,2,3\n")],
        "x.csv is neither .npz nor .npy",
    ),
    "arrays_npy_without_labels": lambda d: (
        [*ARRAYS, "--data.path=" + arrays(d, "x.npy", x=X)],
        "holds only x; pass its labels",
    ),
    "arrays_labels_missing": lambda d: (
        [*ARRAYS, "--data.path=" + arrays(d, "x.npy", x=X), f"--data.labels_path={d}/y.npy"],
        "labels_path=",
    ),
    "arrays_without_x_key": lambda d: (
        [*ARRAYS, "--data.path=" + arrays(d, "a.npz", series=X, y=Y)],
        "expected exactly one named one of",
    ),
    "arrays_two_x_keys": lambda d: (
        [*ARRAYS, "--data.path=" + arrays(d, "a.npz", x=X, X=X, y=Y)],
        "holds arrays ['X', 'x', 'y']",
    ),
    "arrays_two_dimensional": lambda d: (
        [*ARRAYS, "--data.path=" + arrays(d, "a.npz", x=X[..., 0], y=Y)],
        "expected (N, L, C)",
    ),
    "arrays_empty": lambda d: (
        [*ARRAYS, "--data.path=" + arrays(d, "a.npz", x=X[:, :0], y=Y)],
        "is empty",
    ),
    "arrays_of_strings": lambda d: (
        [*ARRAYS, "--data.path=" + arrays(d, "a.npz", x=X.astype(str), y=Y)],
        "expected numbers",
    ),
    "arrays_labels_of_another_length": lambda d: (
        [*ARRAYS, "--data.path=" + arrays(d, "a.npz", x=X, y=Y[:5])],
        "expected labels of shape (20,)",
    ),
    "arrays_float_labels": lambda d: (
        [*ARRAYS, "--data.path=" + arrays(d, "a.npz", x=X, y=Y.astype(float))],
        "save them with y.astype(np.int64)",
    ),
    "arrays_with_nan": lambda d: (
        [*ARRAYS, "--data.path=" + arrays(d, "a.npz", x=np.where(X > 2, np.nan, X), y=Y)],
        "NaN/inf values",
    ),
    "arrays_one_class": lambda d: (
        [*ARRAYS, "--data.path=" + arrays(d, "a.npz", x=X, y=Y * 0)],
        "is not a classification",
    ),
    "arrays_label_outside_classes": lambda d: (
        [*ARRAYS, "--data.path=" + arrays(d, "a.npz", x=X, y=Y * 3), "--data.num_classes=2"],
        "labels [3] are outside [0, num_classes=2)",
    ),
    "arrays_val_fraction_empties_a_split": lambda d: (
        [*ARRAYS, "--data.path=" + arrays(d, "a.npz", x=X, y=Y), "--data.val_fraction=0.01"],
        "leaves the train or val split empty",
    ),
    "arrays_val_with_other_channels": lambda d: (
        [
            *ARRAYS,
            "--data.path=" + arrays(d, "a.npz", x=X, y=Y),
            "--data.val_path=" + arrays(d, "v.npz", x=X[..., :1], y=Y),
        ],
        "has C=1 channels but",
    ),
{%- endif %}
    "checkpoint_that_is_text": lambda d: (
        ["--ckpt_path=" + text(d, "notes.ckpt", b"hello, not a checkpoint\n")],
        "is not a checkpoint written by fit (not a file written by torch.save",
    ),
    "checkpoint_that_is_another_zip": lambda d: (
        ["--ckpt_path=" + corrupt_zip(d)],
        "is not a checkpoint written by fit",
    ),
    "checkpoint_of_weights_only": lambda d: (
        ["--ckpt_path=" + without_loops(d)],
        "missing ['global_step', 'loops', 'optimizer_states']",
    ),
    "checkpoint_that_is_a_folder": lambda d: ([f"--ckpt_path={d}"], "no such file"),
    "config_with_a_yaml_syntax_error": lambda d: (
        ["--config=" + text(d, "broken.yaml", b"model:\n  lr: [1,\n")],
        f"in {d}/broken.yaml, line 3",
    ),
}


def assert_one_line_and_nothing_written(args: list[str], message: str, root: Path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main([*FIT, f"--run.root={root}", *args])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], err
    assert not root.exists(), sorted(root.rglob("*"))


@pytest.mark.parametrize("args, message", ARGUMENTS.values(), ids=ARGUMENTS.keys())
def test_bad_argument_stops_with_one_line_and_writes_nothing(args, message, tmp_path, capsys):
    assert_one_line_and_nothing_written(args, message, tmp_path / "runs", capsys)


@pytest.mark.parametrize("case", FILES.values(), ids=FILES.keys())
def test_bad_file_stops_with_one_line_and_writes_nothing(case, tmp_path, capsys):
    folder = tmp_path / "inputs"
    folder.mkdir()
    args, message = case(folder)
    inputs = sorted(folder.rglob("*"))
    assert_one_line_and_nothing_written(args, message, tmp_path / "runs", capsys)
    assert sorted(folder.rglob("*")) == inputs  # no cache beside a rejected file either
{%- if cookiecutter.task == 'language_model' %}


def test_a_start_stopped_by_bad_data_never_says_it_is_writing_a_run(tmp_path, caplog):
    """The data is found bad while Lightning sets up; "writing to" comes only after that."""
    args, message = FILES["text_shorter_than_a_window"](tmp_path)
    with pytest.raises(SystemExit):
        main([*FIT, f"--run.root={tmp_path / 'runs'}", *args])
    assert "seq_len + 1 = 17" not in caplog.text  # the error goes to stderr, not the log
    assert "writing to" not in caplog.text
    main([*FIT, f"--run.root={tmp_path / 'runs'}", "--run.id=good"])  # a good start says it
    assert f"run good: writing to {tmp_path / 'runs' / 'good'}" in caplog.text
{%- endif %}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A run folder with a last.ckpt of the FIT model after two steps."""
    root = tmp_path_factory.mktemp("trained")
    main([*FIT, f"--run.root={root}", "--run.id=run"])
    return root


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--model.net.backbone.d_model=32"],
{%- if cookiecutter.task == 'language_model' %}
            "net.backbone.embedding.weight is (16, 16) there, (16, 32)",
{%- else %}
            "net.input_proj.weight is (16, 4) there, (32, 4)",
{%- endif %}
        ),
        (["--model.net.backbone.n_layer=2"], "it has no net.backbone.layers.1."),
{%- if cookiecutter.task == 'language_model' %}
        (
            ["--data.num_symbols=16"],
            "net.backbone.embedding.weight is (16, 16) there, (24, 16) here",
        ),
    ],
    ids=["wider", "deeper", "larger_vocabulary"],
{%- else %}
        (["--data.num_channels=3"], "net.input_proj.weight is (16, 4) there, (16, 3) here"),
    ],
    ids=["wider", "deeper", "more_channels"],
{%- endif %}
)
def test_resuming_a_run_with_another_model_stops_and_leaves_the_run_as_it_was(
    args, message, trained_run, capsys
):
    before = {p: p.stat().st_mtime_ns for p in trained_run.rglob("*")}
    with pytest.raises(SystemExit) as stopped:
        main([*FIT, f"--run.root={trained_run}", "--run.id=run", *args])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "holds another model than this config builds" in err
    assert message in err
    assert {p: p.stat().st_mtime_ns for p in trained_run.rglob("*")} == before


# --- validate, test and predict with the FIT run's last.ckpt: (arguments, piece of the message)
EVALUATIONS = {
    "validate_without_a_checkpoint": (
        ["validate"],
        "validate needs trained weights: without --ckpt_path it would validate a randomly",
    ),
    "predict_without_a_checkpoint": (["predict"], "predict needs trained weights"),
    "validate_a_wider_model": (
        ["validate", "--model.net.backbone.d_model=32", "{ckpt}"],
{%- if cookiecutter.task == 'language_model' %}
        "holds another model than this config builds (net.backbone.embedding.weight is "
        "(16, 16) there, (16, 32) here); validate it with the config it was trained with",
{%- else %}
        "holds another model than this config builds (net.input_proj.weight is "
        "(16, 4) there, (32, 4) here); validate it with the config it was trained with",
{%- endif %}
    ),
    "test_a_deeper_model": (
        ["test", "--model.net.backbone.n_layer=2", "{ckpt}"],
        "holds another model than this config builds (it has no net.backbone.layers.1.",
    ),
{%- if cookiecutter.task == 'language_model' %}
    "predict_with_another_vocabulary": (
        ["predict", "--data.num_symbols=16", "{ckpt}"],
        "holds another model than this config builds",
    ),
    "test_text_without_a_test_split": (
        ["test", *TEXT, "--data.path={text}", "{ckpt}"],
        "TextFile: has no test split; fit and test with data.test_fraction=0.05",
    ),
{%- else %}
    "predict_with_other_classes": (
        ["predict", "--data.num_classes=3", "--data.seq_len=96", "{ckpt}"],
        "holds another model than this config builds",
    ),
    "test_arrays_without_a_test_split": (
        ["test", CLASSIFIER, *TINY_BACKBONE, *ARRAYS, "--data.path={arrays}", "{ckpt}"],
        "ArrayClassification: has no test split; give your held-out samples as data.test_path",
    ),
{%- endif %}
}


@pytest.mark.parametrize("args, message", EVALUATIONS.values(), ids=EVALUATIONS.keys())
def test_evaluating_the_wrong_weights_stops_with_one_line(
    args, message, trained_run, tmp_path, capsys
):
    files = {
        "ckpt": "--ckpt_path=" + str(trained_run / "run" / "checkpoints" / "last.ckpt"),
{%- if cookiecutter.task == 'language_model' %}
        "text": text(tmp_path, "a.txt", b"some text to read " * 20),
{%- else %}
        "arrays": arrays(tmp_path, "a.npz", x=X, y=Y),
{%- endif %}
    }
    command, *rest = [arg.format(**files) for arg in args]
    before = sorted(trained_run.rglob("*"))
    with pytest.raises(SystemExit) as stopped:
        main([command, *FIT[1:], *rest, f"--run.root={tmp_path / 'runs'}"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and len(errors) == 1 and message in errors[0], err
    assert not (tmp_path / "runs").exists() and sorted(trained_run.rglob("*")) == before
{%- if cookiecutter.task == 'language_model' %}


def test_bad_data_found_by_lightning_setup_leaves_no_event_file(tmp_path, capsys):
    """Lightning opens the TensorBoard file before it sets up the data; a bad text is found
    there. The start removes what it wrote."""
    args, message = FILES["text_shorter_than_a_window"](tmp_path)
    root = tmp_path / "runs"
    root.mkdir()  # the root exists already; the run's own folder must not stay behind
    with pytest.raises(SystemExit):
        main([*FIT, f"--run.root={root}", *args])
    assert message in capsys.readouterr().err
    assert list(root.iterdir()) == []
{%- endif %}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", PACKAGE, *FIT, *args],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_bad_input_exits_2_with_one_line_from_the_command_line(tmp_path):
    done = run_cli(f"--run.root={tmp_path}", "--model.lr=-1")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == "error: model.lr=-1.0 must be > 0"


def test_bad_file_exits_2_with_one_line_from_the_command_line(tmp_path):
    args, message = FILES["{{ 'text_not_utf8' if cookiecutter.task == 'language_model' else 'arrays_csv' }}"](tmp_path)
    done = run_cli(f"--run.root={tmp_path / 'runs'}", *args)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last
    assert not (tmp_path / "runs").exists()


# --- Apple silicon: Lightning's `auto` would pick MPS, a device without float64.
@pytest.fixture
def mac_without_float64(monkeypatch):
    """MPS is available, and refuses float64 as it does on a Mac (with the same error)."""
    ones = torch.ones

    def ones_on_mps(*size, dtype=None, device=None, **kwargs):
        if str(device) == "mps" and dtype == torch.float64:
            raise TypeError("Cannot convert a MPS Tensor to float64 dtype as the MPS framework")
        return ones(*size, dtype=dtype, device=device, **kwargs)

    monkeypatch.setattr(MPSAccelerator, "is_available", staticmethod(lambda: True))
    monkeypatch.setattr(torch, "ones", ones_on_mps)


def test_auto_accelerator_on_a_mac_trains_on_the_cpu_and_says_why(
    mac_without_float64, tmp_path, caplog
):
    assert not float64_works("mps") and float64_works("cpu")
    args = [a for a in FIT if not a.startswith("--trainer.accelerator")]
    with caplog.at_level(logging.INFO):
        cli = main([*args, "--trainer.accelerator=auto", f"--run.root={tmp_path}"])
    assert isinstance(cli.trainer.accelerator, CPUAccelerator)
    assert cli.trainer.global_step == 2
    assert "trainer.accelerator=auto -> cpu, not Apple's MPS: MPS has no float64" in caplog.text


def test_mps_asked_for_with_mamba1_stops_with_one_line(mac_without_float64, tmp_path, capsys):
    args = ["--trainer.accelerator=mps", "--model.net.backbone.mixer=Mamba1"]
    message = "trainer.accelerator=mps: MPS has no float64"
    assert_one_line_and_nothing_written(args, message, tmp_path / "runs", capsys)
