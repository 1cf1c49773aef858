"""A checkpoint written by `fit`, read once: the trained network and what it was trained on.

`fit` writes Lightning checkpoints (`runs/<id>/checkpoints/*.ckpt`): the LightningModule's
weights under `net.`, the optimiser and loop state, the data module's arguments, and (from
module.py's on_save_checkpoint) the network's class and shape. `load_trained` rebuilds the
plain network from them with torch alone, for the commands that use a model rather than
{%- if cookiecutter.task == 'language_model' %}
train it (generate, export, extrapolate, evaluate); `language_model` gives those that need a
language model and its tokenizer (from a checkpoint or published weights) the pair, checked.
{%- else %}
train it (extrapolate).
{%- endif %}
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

{% if cookiecutter.task == 'language_model' -%}
from .data.text import TextTokenizer
from .machinery.hub import hub_file, looks_like_path
from .model import MambaLM
{%- else -%}
from .classifier import MambaClassifier
{%- endif %}

NETWORKS = {cls.__name__: cls for cls in [{{ 'MambaLM' if cookiecutter.task == 'language_model' else 'MambaClassifier' }}]}


@dataclass
class Trained:
    """A network from a fit checkpoint and the data module it was trained on."""

    net: nn.Module
    data_class: str | None  # e.g. "<package>.data.{{ 'TextFile' if cookiecutter.task == 'language_model' else 'SyntheticSeries' }}", as LightningCLI recorded it
    data_args: dict  # that data module's arguments
{%- if cookiecutter.task == 'language_model' %}

    @property
    def tokenizer(self) -> str | None:
        """The tokenizer of a model trained on text (TextFile and the like), else None."""
        return self.data_args.get("tokenizer")
{%- endif %}


def load_trained(path: str | Path, impl: str | None = None) -> Trained:
    """Rebuild the network of a fit checkpoint, on the CPU; impl overrides its backbone.impl
    (a checkpoint written with the fused kernels loads into the reference twin and back)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--ckpt_path={path}: no such file; give a .ckpt written by fit")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        described = saved["net"]
        cls = NETWORKS[described["class"]]
    except Exception as err:  # not a zip, a bad pickle, or not one of our fit checkpoints
        raise ValueError(
            f"--ckpt_path={path} is not a checkpoint written by this project's fit "
            f"({type(err).__name__}: {err}); give a runs/<id>/checkpoints/*.ckpt file"
        ) from None
    net = cls.from_config(described["config"], impl)
    weights = {k.removeprefix("net."): v for k, v in saved["state_dict"].items()}
    net.load_state_dict(weights)
    data = dict(saved.get("datamodule_hyper_parameters") or {})
    data_class = data.pop("_class_path", None)
    data.pop("_instantiator", None)
    return Trained(net.eval(), data_class, data)
{%- if cookiecutter.task == 'language_model' %}


def one_source(ckpt_path: str | None, pretrained: str | None) -> None:
    """A command reads one model: a fit checkpoint or published weights, not both or neither."""
    if (ckpt_path is None) == (pretrained is None):
        raise ValueError(
            "give one of --ckpt_path (a .ckpt written by fit) and --pretrained (a checkpoint "
            "folder or hub id)"
        )


def language_model(
    ckpt_path: str | None,
    pretrained: str | None,
    revision: str | None = None,
    tokenizer: str | None = None,
    impl: str = "auto",
):
    """The MambaLM of a fit checkpoint or of published weights, and its tokenizer: `tokenizer`,
    else the one the checkpoint was trained with, else the tokenizer.json shipped beside the
    weights. Returns (model, data.text.TextTokenizer)."""
    own = None  # the tokenizer the weights were trained with, where that is known
    if ckpt_path is not None:
        trained = load_trained(ckpt_path, impl)
        model, own = trained.net, trained.tokenizer
    else:
        model = MambaLM.from_pretrained(pretrained, revision, impl=impl)
        folder = Path(pretrained).expanduser()
        found = folder / "tokenizer.json" if folder.is_dir() else None
        if found is None and tokenizer is None and not looks_like_path(pretrained):
            found = hub_file(pretrained, "tokenizer.json", revision, required=False)
        own = str(found) if found is not None and found.is_file() else None
    if tokenizer is not None and own is not None and tokenizer != own:
        check_same_tokenizer(tokenizer, own)
    tokenizer = tokenizer or own
    if tokenizer is None:
        raise ValueError(
            "--tokenizer is needed: the model was not trained on text with a known tokenizer; "
            "give bytes, a tokenizer.json or a hub id (e.g. EleutherAI/gpt-neox-20b)"
        )
    text = TextTokenizer(tokenizer)
    if text.vocab_size > model.vocab_size:
        raise ValueError(
            f"--tokenizer={tokenizer} has {text.vocab_size} tokens, more than the model's "
            f"vocabulary of {model.vocab_size}; use the tokenizer it was trained with"
        )
    return model, text


def check_same_tokenizer(given: str, own: str) -> None:
    """--tokenizer must be the one the weights were trained with (the same tokenizer.json, or
    bytes for bytes): another maps text to other ids, and the output would be noise. An own
    tokenizer that can no longer be read (moved, offline) leaves the choice to --tokenizer."""
    try:
        expected = TextTokenizer(own).fingerprint
    except FileNotFoundError:
        return
    if TextTokenizer(given).fingerprint != expected:
        raise ValueError(
            f"--tokenizer={given} is not the tokenizer this model was trained with ({own}); "
            "leave --tokenizer out to use that one"
        )
{%- endif %}
