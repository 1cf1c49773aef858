"""The language model: a Mamba backbone and an output head. Plain PyTorch, no Lightning.

    from {{ cookiecutter.package_name }}.model import MambaLM

    model = MambaLM.from_pretrained("state-spaces/mamba-130m")     # or a local folder
    logits = model(ids)                                             # (B, L) -> (B, L, V)
    out = model.generate(ids, max_new_tokens=32, temperature=0.8, top_p=0.9)
    model.save_pretrained("exported/", format="hf")                 # or "mamba_ssm"

This mirrors mamba-ssm's `MambaLMHeadModel`: `backbone` is its MixerModel (same parameter
names), and the head is either the embedding itself (tied, as the published state-spaces
checkpoints are) or a separate `lm_head` (untied, as HF's Mamba2 defaults and Codestral are).
Training lives elsewhere (module.py): this class knows nothing of optimisers or Lightning.
"""

from collections.abc import Iterator, Sequence
from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import generation
from .backbone import Backbone, BackboneConfig, InferenceParams
from .generation import Sampling, sample_token  # noqa: F401 (sample_token: importable from here)
from .pretrained import read_checkpoint, save


class MambaLM(nn.Module):
    """Token ids (B, L) -> next-token logits (B, L, vocab_size).

    Args:
        backbone: the backbone's shape and implementation (impl: auto | fused | reference).
        vocab_size: the tokenizer's vocabulary; the embedding is padded to a multiple of
            backbone.pad_vocab_size_multiple, the logits are not. The CLI fills it in from the data.
        tie_embeddings: the output head is the embedding (True) or its own `lm_head` (False).
        init_from: start from pretrained weights: a checkpoint folder (mamba-ssm's or HF's
            format) or a hub id such as state-spaces/mamba-130m. Its config fixes the shape:
            fields left at their defaults take its values, others must agree with it (the
            command line also refuses a given value equal to a default that disagrees).
        init_revision: a hub branch, tag or commit of init_from.
    """

    def __init__(
        self,
        backbone: BackboneConfig = BackboneConfig(),  # noqa: B008 (frozen: safe to share)
        vocab_size: int | None = None,
        tie_embeddings: bool = True,
        init_from: str | None = None,
        init_revision: str | None = None,
    ):
        super().__init__()
        pretrained = None
        if init_from is not None:
            pretrained = read_checkpoint(init_from, init_revision)
            backbone, vocab_size, tie_embeddings = pretrained.configure(
                backbone, vocab_size, tie_embeddings
            )
        if not vocab_size or vocab_size < 1:
            raise ValueError(
                f"MambaLM needs a vocab_size >= 1, got {vocab_size!r}; train it on a "
                "language-model data module (SelectiveCopying, InductionHeads, TextFile), which "
                "sets it, or pass vocab_size"
            )
        self.vocab_size, self.tie_embeddings = vocab_size, tie_embeddings
        self.backbone = Backbone(backbone, vocab_size=vocab_size)
        rows = self.backbone.embedding.num_embeddings  # vocab_size, padded
        self.lm_head = None if tie_embeddings else nn.Linear(backbone.d_model, rows, bias=False)
        if pretrained is not None:
            pretrained.load_into(self)

    @property
    def config(self) -> dict:
        """The arguments that rebuild this model's shape (pretrained weights become its own)."""
        return {
            "backbone": asdict(self.backbone.config),
            "vocab_size": self.vocab_size,
            "tie_embeddings": self.tie_embeddings,
        }

    @classmethod
    def from_config(cls, config: dict, impl: str | None = None) -> "MambaLM":
        """The model that `config` (see .config) describes, optionally with another impl."""
        backbone = BackboneConfig(**{**config["backbone"], **({"impl": impl} if impl else {})})
        return cls(backbone, config["vocab_size"], config["tie_embeddings"])

    @property
    def output_weight(self) -> Tensor:
        """The head's weight over the real vocabulary: (vocab_size, d_model)."""
        head = self.backbone.embedding if self.lm_head is None else self.lm_head
        return head.weight[: self.vocab_size]

    def forward(self, input_ids: Tensor, inference_params: InferenceParams | None = None) -> Tensor:
        hidden = self.backbone(input_ids, inference_params)  # (B, L, D)
        return F.linear(hidden, self.output_weight)  # (B, L, V)

    # ------------------------------------------------------------------------ generation
    def generate(
        self,
        input_ids: Tensor | Sequence[Tensor],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        cuda_graph: bool = True,
    ) -> Tensor | list[Tensor]:
        """Continue token ids (B, L) by max_new_tokens: (B, L + max_new_tokens).

        input_ids may also be a list of 1-D prompts of different lengths; each gets the tokens
        it would get alone, and the result is the list of each prompt with its new tokens.
        The prompts run through the parallel (chunked) forward once, which leaves each layer's
        conv and SSM state behind; every new token is then one recurrent step, replayed from a
        CUDA graph on a GPU (cuda_graph=False: run it eagerly). temperature 0 is greedy
        decoding; otherwise tokens are drawn from the softmax at that temperature, restricted
        to the top_k likeliest and to the smallest set whose probability reaches top_p. Draws
        use torch's global generator: seed it with torch.manual_seed. Under torch.autocast
        the matrices multiply in autocast's dtype, and the recurrent states are kept in it.
        """
        steps = self.stream(input_ids, max_new_tokens, temperature, top_k, top_p, cuda_graph)
        new = torch.cat(list(steps), dim=1)  # (B, max_new_tokens)
        if isinstance(input_ids, Tensor):
            return torch.cat([input_ids, new.to(input_ids.device)], dim=1)
        rows = zip(input_ids, new, strict=True)
        return [torch.cat([prompt, row.to(prompt.device)]) for prompt, row in rows]

    def stream(
        self,
        input_ids: Tensor | Sequence[Tensor],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        cuda_graph: bool = True,
    ) -> Iterator[Tensor]:
        """generate's new tokens as they come: (B, 1) per step, on the model's device."""
        sampling = Sampling(temperature, top_k, top_p)
        return generation.stream(self, input_ids, max_new_tokens, sampling, cuda_graph)

    # ------------------------------------------------------------------ pretrained weights
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        revision: str | None = None,
        impl: str = "auto",
        vocab_size: int | None = None,
    ) -> "MambaLM":
        """A model with the weights of a checkpoint folder or hub id (see init_from).

        vocab_size: a tokenizer's, which may differ from the checkpoint's by padding only.
        """
        backbone = BackboneConfig(impl=impl)
        return cls(backbone, vocab_size, init_from=name_or_path, init_revision=revision)

    def save_pretrained(self, directory: str, format: str = "mamba_ssm"):
        """Write a folder that mamba-ssm's or HF's `from_pretrained` loads (and ours too).

        format: mamba_ssm (config.json + pytorch_model.bin) or hf (config.json +
        model.safetensors, for MambaForCausalLM / Mamba2ForCausalLM).
        """
        return save(self, directory, format)
