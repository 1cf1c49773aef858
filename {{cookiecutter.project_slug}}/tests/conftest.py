"""What the tests share: the project's paths and the tiny models the CLI tests train."""

from pathlib import Path
{% if cookiecutter.task == 'language_model' %}
import pytest
{% endif %}
PROJECT = Path(__file__).resolve().parents[1]
PACKAGE = "{{ cookiecutter.package_name }}"
{%- if cookiecutter.task == 'language_model' %}
LANGUAGE_MODEL = f"--model={PACKAGE}.module.LanguageModelling"
{%- else %}
CLASSIFIER = f"--model={PACKAGE}.module.Classification"
{%- endif %}

# The smallest model the CLI tests train: the pure-PyTorch twin, one layer of d_model 16.
# `--model=<class>` comes first: arguments given before it would belong to another class.
TINY_BACKBONE = [
    "--model.net.backbone.impl=reference",
    "--model.net.backbone.d_model=16",
    "--model.net.backbone.n_layer=1",
    "--model.net.backbone.d_state=8",
    "--model.net.backbone.headdim=8",
    "--model.net.backbone.chunk_size=16",
]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
{%- if cookiecutter.task == 'language_model' %}
TINY = [LANGUAGE_MODEL, *TINY_BACKBONE, *QUIET]
# Selective copying small enough for many CPU steps a second: 24 batches an epoch.
TINY_COPYING = [
    f"--data={PACKAGE}.data.SelectiveCopying",
    "--data.seq_len=24",
    "--data.num_tokens=4",
    "--data.batch_size=4",
    "--data.num_train_samples=96",
    "--data.num_val_samples=8",
]
{%- else %}
TINY_CLASSIFIER = [CLASSIFIER, *TINY_BACKBONE, *QUIET]
# Two classes of series, small enough for many CPU steps a second: 24 batches an epoch.
TINY_SERIES = [
    f"--data={PACKAGE}.data.SyntheticSeries",
    "--data.seq_len=48",
    "--data.num_classes=2",
    "--data.batch_size=4",
    "--data.num_train_samples=96",
    "--data.num_val_samples=8",
]
{%- endif %}
# The task this project was made for: the model and the data of the tests of what every run
# does (resume, several processes, the run folder).
{%- if cookiecutter.task == 'language_model' %}
TASK_MODEL, TINY_MODEL, TINY_DATA = LANGUAGE_MODEL, TINY, TINY_COPYING
{%- else %}
TASK_MODEL, TINY_MODEL, TINY_DATA = CLASSIFIER, TINY_CLASSIFIER, TINY_SERIES
{%- endif %}
{%- if cookiecutter.task == 'language_model' %}

CORPUS = "the cat sat on the mat. the dog sat on the log. a cat and a dog. " * 30


def bpe_tokenizer(path: Path, vocab_size: int = 300) -> Path:
    """A byte-level BPE tokenizer.json (GPT-NeoX's kind) trained offline on CORPUS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
    )
    tokenizer.train_from_iterator([CORPUS], trainer)
    tokenizer.save(str(path))
    return path


@pytest.fixture
def tokenizer_json(tmp_path) -> Path:
    return bpe_tokenizer(tmp_path / "tokenizer.json")
{%- endif %}
