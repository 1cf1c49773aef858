"""The Mamba backbone: embedding -> N x Block(norm, mixer[, norm2, mlp]) -> norm_f.

One composition, two sets of parts:

* `fused`: mamba-ssm's own Mamba/Mamba2, Block and RMSNorm with its CUDA and Triton kernels.
  Imported only when asked for, so the CPU path never needs mamba-ssm.
* `reference`: the pure-PyTorch twins in `mixers.py`, with the same module tree, parameter
  names, shapes and initialisation. A state_dict saved by one loads into the other.

`auto` picks fused when a CUDA device and the kernels are there, else reference, and says why.
"""

import logging
import math
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import torch
from torch import Tensor, nn

from . import mixers

log = logging.getLogger(__name__)


Impl = Literal["auto", "fused", "reference"]


@dataclass(frozen=True)
class BackboneConfig:
    """Shape of the backbone. Defaults match mamba-ssm's mixers; configs override them."""

    impl: Impl = "auto"
    mixer: Literal["Mamba1", "Mamba2"] = "Mamba2"
    d_model: int = 256
    n_layer: int = 4
    d_intermediate: int = 0  # hidden size of a GatedMLP after each mixer; 0 = no MLP
    d_state: int = 64
    d_conv: int = 4
    expand: int = 2
    headdim: int = 64  # Mamba2 only
    ngroups: int = 1  # Mamba2 only
    chunk_size: int = 256  # Mamba2 only: SSD chunk length
    residual_in_fp32: bool = True
    norm_epsilon: float = 1e-5
    pad_vocab_size_multiple: int = 8

    def __post_init__(self):
        positive = (
            "d_model",
            "n_layer",
            "d_state",
            "d_conv",
            "expand",
            "headdim",
            "ngroups",
            "chunk_size",
            "pad_vocab_size_multiple",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"backbone.{name}={value!r} must be a positive integer")
        if self.d_intermediate < 0:
            raise ValueError(
                f"backbone.d_intermediate={self.d_intermediate} must be >= 0 (0 = no MLP)"
            )
        if self.mixer == "Mamba2":
            d_inner = self.expand * self.d_model
            if d_inner % self.headdim:
                raise ValueError(
                    f"backbone: expand * d_model = {d_inner} is not divisible by "
                    f"headdim={self.headdim}; Mamba2 splits channels into heads of headdim. "
                    f"Use a headdim that divides {d_inner} (e.g. {math.gcd(d_inner, 64)})."
                )
            if (d_inner // self.headdim) % self.ngroups:
                raise ValueError(
                    f"backbone: {d_inner // self.headdim} heads are not divisible by "
                    f"ngroups={self.ngroups}; use an ngroups that divides the number of heads."
                )

    def ssm_cfg(self) -> dict:
        """Keyword arguments for mamba-ssm's `create_block(ssm_cfg=...)`."""
        cfg = {
            "layer": self.mixer,
            "d_state": self.d_state,
            "d_conv": self.d_conv,
            "expand": self.expand,
        }
        if self.mixer == "Mamba2":
            cfg.update(headdim=self.headdim, ngroups=self.ngroups, chunk_size=self.chunk_size)
        return cfg


# Checkpoints store the config in their hyperparameters; allow it under torch.load(weights_only).
torch.serialization.add_safe_globals([BackboneConfig])


@dataclass
class InferenceParams:
    """Recurrent state for token-by-token decoding; works with both implementations."""

    max_seqlen: int
    max_batch_size: int
    seqlen_offset: int = 0
    batch_size_offset: int = 0
    key_value_memory_dict: dict = field(default_factory=dict)
    lengths_per_sample: Tensor | None = None


def fused_available() -> tuple[bool, str]:
    """Whether the fused path can run here, and why not if it cannot."""
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    try:
        import mamba_ssm  # noqa: F401
    except ImportError as err:
        return False, f"mamba-ssm is not importable ({err})"
    return True, f"CUDA device {torch.cuda.get_device_name()} and mamba-ssm are available"


def resolve_impl(impl: Impl) -> str:
    """Turn `auto` into `fused` or `reference`; refuse `fused` where it cannot run."""
    if impl == "reference":
        return impl
    ok, reason = fused_available()
    if impl == "fused":
        if not ok:
            raise RuntimeError(
                f"backbone.impl=fused needs CUDA and mamba-ssm; found {reason}. "
                "Use backbone.impl=auto or reference."
            )
        return impl
    chosen = "fused" if ok else "reference"
    log.info("backbone.impl=auto -> %s (%s)", chosen, reason)
    return chosen


def _fused_parts():
    from mamba_ssm.models.mixer_seq_simple import create_block
    from mamba_ssm.ops.triton.layer_norm import RMSNorm

    return partial(create_block, fused_add_norm=True), RMSNorm


def _reference_create_block(
    d_model,
    d_intermediate,
    ssm_cfg,
    norm_epsilon,
    rms_norm,
    residual_in_fp32,
    fused_add_norm=False,
    layer_idx=None,
    device=None,
    dtype=None,
):
    """mamba-ssm's create_block, with the twins."""
    factory = {"device": device, "dtype": dtype}
    ssm_cfg = dict(ssm_cfg)
    mixer_cls = mixers.Mamba2 if ssm_cfg.pop("layer") == "Mamba2" else mixers.Mamba
    mlp_cls = (
        partial(mixers.GatedMLP, hidden_features=d_intermediate, out_features=d_model, **factory)
        if d_intermediate
        else nn.Identity
    )
    block = mixers.Block(
        d_model,
        partial(mixer_cls, layer_idx=layer_idx, **ssm_cfg, **factory),
        mlp_cls,
        norm_cls=partial(mixers.RMSNorm, eps=norm_epsilon, **factory),
        residual_in_fp32=residual_in_fp32,
    )
    block.layer_idx = layer_idx
    return block


def _init_weights(module: nn.Module, n_layer: int, n_residuals_per_layer: int) -> None:
    """mamba-ssm's model-level init (GPT-2 style), applied module by module.

    Linear biases start at zero (except dt_proj's), embeddings at N(0, 0.02), and the output
    projections that write into the residual stream are scaled by 1/sqrt(residuals).
    """
    if isinstance(module, nn.Linear) and module.bias is not None:
        if not getattr(module.bias, "_no_reinit", False):
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
    for name, p in module.named_parameters():
        if name in ("out_proj.weight", "fc2.weight"):
            nn.init.kaiming_uniform_(p, a=math.sqrt(5))
            with torch.no_grad():
                p /= math.sqrt(n_residuals_per_layer * n_layer)


# mamba-ssm's Triton SSD kernels (Mamba2) launch one block row per (sample, chunk) of a call,
# and CUDA launches at most 65535 rows: more fails with "Triton Error [CUDA]: invalid argument".
SSD_MAX_ROWS = 65535


class Backbone(nn.Module):
    """mamba-ssm's MixerModel: the same parameter names, with fused or reference parts.

    vocab_size=None drops the token embedding: the input is then already (B, L, d_model).
    A batch larger than one call of the fused Mamba2 kernels can take runs in groups of samples.
    """

    def __init__(
        self, config: BackboneConfig, vocab_size: int | None = None, device=None, dtype=None
    ):
        super().__init__()
        self.config = config
        self.impl = resolve_impl(config.impl)
        create_block, norm_cls = (
            _fused_parts() if self.impl == "fused" else (_reference_create_block, mixers.RMSNorm)
        )
        factory = {"device": device, "dtype": dtype}
        self.residual_in_fp32 = config.residual_in_fp32
        if vocab_size is not None:
            multiple = config.pad_vocab_size_multiple
            vocab_size = math.ceil(vocab_size / multiple) * multiple
            self.embedding = nn.Embedding(vocab_size, config.d_model, **factory)
        else:
            self.embedding = None
        self.layers = nn.ModuleList(
            create_block(
                config.d_model,
                d_intermediate=config.d_intermediate,
                ssm_cfg=config.ssm_cfg(),
                norm_epsilon=config.norm_epsilon,
                rms_norm=True,
                residual_in_fp32=config.residual_in_fp32,
                layer_idx=i,
                **factory,
            )
            for i in range(config.n_layer)
        )
        self.norm_f = norm_cls(config.d_model, eps=config.norm_epsilon, **factory)
        n_res = 2 if config.d_intermediate else 1
        self.apply(partial(_init_weights, n_layer=config.n_layer, n_residuals_per_layer=n_res))
        fused_ssd = self.impl == "fused" and config.mixer == "Mamba2"
        self.max_rows = SSD_MAX_ROWS if fused_ssd else None  # (sample, chunk) pairs per call

    def samples_per_call(self, length: int) -> int | None:
        """How many samples of `length` tokens one kernel call takes; None: any number."""
        if self.max_rows is None:
            return None
        chunk = self.config.chunk_size
        per_call = self.max_rows // math.ceil(length / chunk)
        if per_call < 1:
            raise ValueError(
                f"a sequence of {length} tokens is more than the {self.max_rows} chunks of "
                f"{chunk} that mamba-ssm's Mamba2 kernels take in one call; use sequences of "
                f"at most {self.max_rows * chunk} tokens, or train with a larger "
                "model.net.backbone.chunk_size"
            )
        return per_call

    def allocate_inference_cache(self, batch_size: int, max_seqlen: int, dtype=None):
        return {
            i: layer.allocate_inference_cache(batch_size, max_seqlen, dtype=dtype)
            for i, layer in enumerate(self.layers)
        }

    def forward(self, inputs: Tensor, inference_params: InferenceParams | None = None) -> Tensor:
        """inputs: token ids (B, L) or embeddings (B, L, d_model) -> hidden (B, L, d_model)."""
        per_call = self.samples_per_call(inputs.shape[1]) if inference_params is None else None
        if per_call is not None and inputs.shape[0] > per_call:
            # the samples do not interact: the same result, in groups the kernels can launch
            return torch.cat([self(part) for part in inputs.split(per_call)])
        hidden = self.embedding(inputs) if self.embedding is not None else inputs
        residual = None
        for layer in self.layers:
            hidden, residual = layer(hidden, residual, inference_params=inference_params)
        return self.norm_f(
            hidden, residual=residual, prenorm=False, residual_in_fp32=self.residual_in_fp32
        )
