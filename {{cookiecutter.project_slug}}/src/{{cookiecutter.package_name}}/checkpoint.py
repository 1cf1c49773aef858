"""A checkpoint written by `fit`, read once: the trained network and what it was trained on.

`fit` writes Lightning checkpoints (`runs/<id>/checkpoints/*.ckpt`): the LightningModule's
weights under `net.`, the optimiser and loop state, the data module's arguments, and (from
module.py's on_save_checkpoint) the network's class and shape. `load_trained` rebuilds the
plain network from them with torch alone, for the commands that use a model rather than
train it (generate, export, extrapolate, evaluate).
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .classifier import MambaClassifier
from .model import MambaLM

NETWORKS = {cls.__name__: cls for cls in (MambaLM, MambaClassifier)}


@dataclass
class Trained:
    """A network from a fit checkpoint and the data module it was trained on."""

    net: nn.Module
    data_class: str | None  # e.g. "<package>.data.TextFile", as LightningCLI recorded it
    data_args: dict  # that data module's arguments

    @property
    def tokenizer(self) -> str | None:
        """The tokenizer of a model trained on text (TextFile and the like), else None."""
        return self.data_args.get("tokenizer")


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
