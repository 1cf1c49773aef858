"""What the model sees: one LightningDataModule per data source, one module per kind of source.

    base.py        the shared plumbing: argument checks, the sampler, StatefulDataLoaders
{%- if cookiecutter.task == 'language_model' %}
    synthetic.py   SelectiveCopying, InductionHeads: language-model tasks generated on the fly
    text.py        TextFile: your own text, as bytes or through a tokenizer
    hub.py         HubText: a text column of a HF `datasets` dataset (hub or local JSONL/parquet)
{%- else %}
    series.py      SyntheticSeries: generated multichannel series to classify
    arrays.py      ArrayClassification: your own (N, L, C) arrays to classify
{%- endif %}

A LightningDataModule bundles everything about the data in hooks that the Trainer calls in order:

    __init__(...)           every process, when LightningCLI builds the module: check the arguments
{%- if cookiecutter.task == 'language_model' %}
                            and set `vocab_size` and `task`; the CLI copies `vocab_size` into the
                            model before the model is built.
{%- else %}
                            and set `num_channels`, `num_classes` and `task`; the CLI copies the
                            sizes into the model before the model is built.
{%- endif %}
    prepare_data()          once per machine (local rank 0 only), before setup: slow one-off work
                            that writes to disk, such as encoding a text corpus into a token cache.
                            Don't keep state here: other processes never run it.
    setup(stage)            every process, after prepare_data: load or map what prepare_data made.
    train_dataloader() ...  every process, when a loop starts (again every epoch with
                            `Trainer(reload_dataloaders_every_n_epochs=1)`).

{% if cookiecutter.task == 'language_model' -%}
Language-model batches are `(inputs, targets)`, both LongTensor (B, L); the loss at position t
compares the output at t with `targets[t]`, and -100 marks positions that are not scored.
{%- else -%}
Classification batches are `(x, y)`: FloatTensor (B, L, C) and LongTensor (B,).
{%- endif %}

The synthetic tasks draw item i of a split from a generator seeded by (seed, split, i), so every
epoch, worker, restart and DDP rank sees the same data, and train and val never share a seed.
{%- if cookiecutter.task == 'language_model' %}
`test` evaluates a split of its own: the synthetic tasks draw it from seeds (seed, 2, i); TextFile
holds out `test_fraction` of the text, HubText reads `test_split`.
{%- else %}
`test` evaluates a split of its own: SyntheticSeries draws it from seeds (seed, 2, i);
ArrayClassification reads `test_path`.
{%- endif %}
Without one, `test` stops with one line that says how to give one.
"""

{% if cookiecutter.task == 'sequence_classification' -%}
from .arrays import ArrayClassification
{% endif -%}
from .base import IGNORE_INDEX, BaseDataModule, GeneratedDataModule, SeededDataset
{% if cookiecutter.task == 'language_model' -%}
from .hub import HubText
from .synthetic import InductionHeads, SelectiveCopying
from .text import TextFile, TokenWindows
{%- else -%}
from .series import SyntheticSeries
{%- endif %}

__all__ = [
    "IGNORE_INDEX",
{%- if cookiecutter.task == 'sequence_classification' %}
    "ArrayClassification",
{%- endif %}
    "BaseDataModule",
    "GeneratedDataModule",
{%- if cookiecutter.task == 'language_model' %}
    "HubText",
    "InductionHeads",
{%- endif %}
    "SeededDataset",
{%- if cookiecutter.task == 'language_model' %}
    "SelectiveCopying",
    "TextFile",
    "TokenWindows",
{%- else %}
    "SyntheticSeries",
{%- endif %}
]
