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

from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone import Backbone, BackboneConfig, InferenceParams
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
            fields left at their defaults take its values, others must agree with it.
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
    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
    ) -> Tensor:
        """Continue token ids (B, L) by max_new_tokens: (B, L + max_new_tokens).

        The prompt runs through the parallel (chunked) forward once, which leaves each layer's
        conv and SSM state behind; every new token is then one recurrent step. temperature 0
        is greedy decoding; otherwise tokens are drawn from the softmax at that temperature,
        restricted to the top_k likeliest and to the smallest set whose probability reaches
        top_p. Draws use torch's global generator: seed it with torch.manual_seed.
        """
        batch, length = input_ids.shape
        params = InferenceParams(max_seqlen=length + max_new_tokens, max_batch_size=batch)
        logits = self(input_ids, inference_params=params)[:, -1]  # (B, V)
        tokens = [input_ids]
        for _ in range(max_new_tokens):
            token = sample_token(logits.float(), temperature, top_k, top_p)  # (B, 1)
            tokens.append(token)
            params.seqlen_offset += tokens[-2].shape[1]
            logits = self(token, inference_params=params)[:, -1]
        return torch.cat(tokens, dim=1)

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
        return cls(BackboneConfig(impl=impl), vocab_size, init_from=name_or_path,
                   init_revision=revision)  # fmt: skip

    def save_pretrained(self, directory: str, format: str = "mamba_ssm"):
        """Write a folder that mamba-ssm's or HF's `from_pretrained` loads (and ours too).

        format: mamba_ssm (config.json + pytorch_model.bin) or hf (config.json +
        model.safetensors, for MambaForCausalLM / Mamba2ForCausalLM).
        """
        return save(self, directory, format)


def sample_token(
    logits: Tensor, temperature: float, top_k: int | None = None, top_p: float | None = None
) -> Tensor:
    """One token per row of logits (B, V): the argmax at temperature 0, else a draw."""
    if temperature <= 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        ordered, order = logits.sort(dim=-1, descending=True)
        before = ordered.softmax(-1).cumsum(-1) - ordered.softmax(-1)  # mass ahead of each
        ordered = ordered.masked_fill(before >= top_p, float("-inf"))  # the first always stays
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, ordered)
    return torch.multinomial(logits.softmax(-1), 1)
