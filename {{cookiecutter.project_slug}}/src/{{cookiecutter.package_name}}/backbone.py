"""The Mamba backbone: embedding -> N x Block(norm, mixer[, norm2, mlp]) -> norm_f.

A hybrid puts attention (`mixers.MHA`) in place of the Mamba mixer at the layers that
`attn_layer_idx` names, shaped by `attn_cfg`, as mamba-ssm's create_block does.

mamba-ssm's MixerModel built from our own layers (`mixers/`): the same module tree, parameter
names, shapes and initialisation, so a state_dict moves between the two with strict=True. The
layers are the same classes on every device; `impl` only says which kernels they call:

* `fused`: mamba-ssm's and causal-conv1d's CUDA and Triton kernels (refused where they are not).
* `reference`: the plain-PyTorch scans, on any device.
* `auto`: fused when a CUDA device and mamba-ssm are there, else reference, and says why.
"""

import logging
import math
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from typing import Literal

import torch
from torch import Tensor, nn

from . import mixers
from .mixers.attention import attention_problem

log = logging.getLogger(__name__)


Impl = Literal["auto", "fused", "reference"]
# BackboneConfig's muP multipliers, named as in HF's Granite 4.0 config
MUP = ("embedding_multiplier", "residual_multiplier", "logits_scaling")


@dataclass(frozen=True)
class AttnConfig:
    """The attention layers of a hybrid: mamba-ssm's `attn_cfg`, the arguments of its MHA.

    The defaults are MHA's, except `causal`: the backbone reads left to right, so its
    attention does too (mamba-ssm's MHA defaults to false; its hybrid configs set true).
    """

    num_heads: int = 8
    num_heads_kv: int | None = None  # fewer key/value heads (GQA); None: num_heads
    head_dim: int | None = None  # None: d_model // num_heads
    mlp_dim: int = 0  # a SwiGLU MLP inside the layer, beside the attention (rounded up to 256s)
    qkv_proj_bias: bool = True
    out_proj_bias: bool = True
    softmax_scale: float | None = None  # None: 1 / sqrt(head_dim)
    causal: bool = True
    d_conv: int = 0  # a causal depthwise convolution over q, k and v; 0: none
    rotary_emb_dim: int = 0  # channels of each head turned by RoPE; 0: no position encoding
    rotary_emb_base: float = 10000.0
    rotary_emb_interleaved: bool = False  # RoPE's channel pairs: neighbours, not halves

    def kwargs(self) -> dict:
        return asdict(self)

    def sizes(self, d_model: int) -> tuple[int, int]:
        """(head_dim, num_heads_kv) with their None defaults filled in for `d_model`."""
        return self.head_dim or d_model // self.num_heads, self.num_heads_kv or self.num_heads


@dataclass(frozen=True)
class BackboneConfig:
    """Shape of the backbone. Defaults match mamba-ssm's mixers; configs override them."""

    impl: Impl = "auto"
    mixer: Literal["Mamba1", "Mamba2", "Mamba3"] = "Mamba2"
    d_model: int = 256
    n_layer: int = 4
    d_intermediate: int = 0  # hidden size of a GatedMLP after each mixer; 0 = no MLP
    d_state: int = 64
    d_conv: int = 4  # Mamba1 and Mamba2 (Mamba3 has no convolution)
    expand: int = 2
    headdim: int = 64  # Mamba2 and Mamba3
    ngroups: int = 1  # Mamba2 and Mamba3: groups of heads sharing B and C
    chunk_size: int | None = None  # Mamba2 and Mamba3: scan chunk length; None: 256 / 64
    rope_fraction: float = 0.5  # Mamba3: the share of the state rotated by its angles (0.5 or 1)
    is_mimo: bool = False  # Mamba3: multi-input multi-output state update of rank mimo_rank
    mimo_rank: int = 4  # Mamba3 with is_mimo
    is_outproj_norm: bool = False  # Mamba3: a gated RMSNorm per head before out_proj
    residual_in_fp32: bool = True
    norm_epsilon: float = 1e-5
    pad_vocab_size_multiple: int = 8
    attn_layer_idx: tuple[int, ...] = ()  # the layers that are attention (a hybrid), from 0
    attn_cfg: AttnConfig = AttnConfig()  # their shape, in mamba-ssm's names
    # muP multipliers (IBM's Granite 4.0 hybrids): the embedding is scaled by the first, each
    # mixer's and MLP's output by the second before it joins the residual stream, and the final
    # norm's output (so the head's logits) divided by the third. 1.0: none, as mamba-ssm.
    embedding_multiplier: float = 1.0
    residual_multiplier: float = 1.0
    logits_scaling: float = 1.0

    def __post_init__(self):
        positive = (
            "d_model",
            "n_layer",
            "d_state",
            "d_conv",
            "expand",
            "headdim",
            "ngroups",
            "mimo_rank",
            "pad_vocab_size_multiple",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"backbone.{name}={value!r} must be a positive integer")
        for name in MUP:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"backbone.{name}={value!r} must be a positive number (1: none)")
        if self.chunk_size is not None and (
            not isinstance(self.chunk_size, int) or self.chunk_size <= 0
        ):
            raise ValueError(
                f"backbone.chunk_size={self.chunk_size!r} must be a positive integer "
                "(or null: the mixer's default)"
            )
        if self.d_intermediate < 0:
            raise ValueError(
                f"backbone.d_intermediate={self.d_intermediate} must be >= 0 (0 = no MLP)"
            )
        if self.mixer in ("Mamba2", "Mamba3"):
            d_inner = self.expand * self.d_model
            if d_inner % self.headdim:
                raise ValueError(
                    f"backbone: expand * d_model = {d_inner} is not divisible by "
                    f"headdim={self.headdim}; {self.mixer} splits channels into heads of "
                    f"headdim. Use a headdim that divides {d_inner} (e.g. {math.gcd(d_inner, 64)})."
                )
            if (d_inner // self.headdim) % self.ngroups:
                raise ValueError(
                    f"backbone: {d_inner // self.headdim} heads are not divisible by "
                    f"ngroups={self.ngroups}; use an ngroups that divides the number of heads."
                )
        if self.mixer == "Mamba3":
            if self.rope_fraction not in (0.5, 1.0):
                raise ValueError(
                    f"backbone.rope_fraction={self.rope_fraction!r}: Mamba3 rotates half of the "
                    "state or all of it; use 0.5 or 1.0"
                )
            if int(self.d_state * self.rope_fraction) % 4:
                raise ValueError(
                    f"backbone.d_state={self.d_state} at rope_fraction={self.rope_fraction} "
                    f"rotates {int(self.d_state * self.rope_fraction)} state channels; Mamba3's "
                    "kernel turns them in pairs of pairs, so use a d_state whose rotated share "
                    "is a multiple of 4 (e.g. 16, 32, 64, 128)"
                )

        self._check_attention()

    def _check_attention(self):
        """Accept mamba-ssm's config.json layout (a list and a dict) and check it."""
        cfg = self.attn_cfg
        if isinstance(cfg, dict):
            known = {f.name for f in fields(AttnConfig)}
            if set(cfg) - known:
                raise ValueError(
                    f"backbone.attn_cfg: unknown {sorted(set(cfg) - known)}; its entries are "
                    f"mamba-ssm MHA's arguments: {', '.join(sorted(known))}"
                )
            object.__setattr__(self, "attn_cfg", cfg := AttnConfig(**cfg))
        object.__setattr__(self, "attn_layer_idx", idx := tuple(self.attn_layer_idx))
        if not idx:
            return
        for i in idx:
            if not isinstance(i, int) or not 0 <= i < self.n_layer:
                raise ValueError(
                    f"backbone.attn_layer_idx has {i!r}: layers are numbered 0 to "
                    f"n_layer - 1 = {self.n_layer - 1}"
                )
        if len(set(idx)) != len(idx):
            raise ValueError(f"backbone.attn_layer_idx={list(idx)} names a layer twice")
        problem = attention_problem(
            self.d_model, cfg.num_heads, cfg.num_heads_kv, cfg.head_dim, cfg.rotary_emb_dim,
            cfg.mlp_dim,
        )  # fmt: skip
        if problem is None and not cfg.causal:
            problem = (
                "causal=false would let a position see the tokens after it, which the Mamba "
                "layers and decoding cannot; use causal: true"
            )
        if problem is None and cfg.d_conv < 0:
            problem = f"d_conv={cfg.d_conv} must be >= 0 (0: no convolution)"
        if problem:
            raise ValueError(f"backbone.attn_cfg: {problem}")

    @property
    def chunk(self) -> int:
        """The scan's chunk length: chunk_size, or the mixer's default as mamba-ssm recommends
        it (Mamba2 256; Mamba3 64, and 64 / mimo_rank for MIMO, whose kernel holds a chunk of
        every rank at once)."""
        if self.chunk_size:
            return self.chunk_size
        if self.mixer == "Mamba3":
            return max(8, 64 // self.mimo_rank) if self.is_mimo else 64
        return 256

    def ssm_cfg(self) -> dict:
        """mamba-ssm's `ssm_cfg`: the mixer's name under "layer" and its constructor arguments."""
        return {"layer": self.mixer, **self.mixer_kwargs()}

    def mixer_kwargs(self) -> dict:
        """The mixer class's constructor arguments that this config sets."""
        cfg = {"d_state": self.d_state, "expand": self.expand}
        if self.mixer != "Mamba3":
            cfg["d_conv"] = self.d_conv
        if self.mixer != "Mamba1":
            cfg.update(headdim=self.headdim, ngroups=self.ngroups, chunk_size=self.chunk)
        if self.mixer == "Mamba3":
            cfg.update(
                rope_fraction=self.rope_fraction,
                is_mimo=self.is_mimo,
                mimo_rank=self.mimo_rank,
                is_outproj_norm=self.is_outproj_norm,
            )
        return cfg


# Checkpoints store the config in their hyperparameters; allow it under torch.load(weights_only).
torch.serialization.add_safe_globals([BackboneConfig, AttnConfig])


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


def create_block(config: "BackboneConfig", layer_idx: int, kernels: bool, device=None, dtype=None):
    """One layer: Block(norm, mixer[, norm2, mlp]), as mamba-ssm's create_block composes it."""
    factory = {"device": device, "dtype": dtype}
    if layer_idx in config.attn_layer_idx:
        mixer, kwargs = mixers.MHA, config.attn_cfg.kwargs()
    else:
        mixer, kwargs = mixers.MIXERS[config.mixer], config.mixer_kwargs()
    if mixer is mixers.Mamba2:  # its gated norm uses the model's epsilon, as HF's Mamba2 does
        kwargs["norm_eps"] = config.norm_epsilon
    mixer_cls = partial(mixer, layer_idx=layer_idx, kernels=kernels, **kwargs, **factory)
    mlp_cls = (
        partial(mixers.GatedMLP, hidden_features=config.d_intermediate, **factory)
        if config.d_intermediate
        else nn.Identity
    )
    norm_cls = partial(mixers.RMSNorm, eps=config.norm_epsilon, kernels=kernels, **factory)
    return mixers.Block(
        config.d_model, mixer_cls, mlp_cls, norm_cls, config.residual_in_fp32,
        residual_multiplier=config.residual_multiplier,
    )  # fmt: skip


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
    """mamba-ssm's MixerModel: the same parameter names, fused or reference kernels.

    vocab_size=None drops the token embedding: the input is then already (B, L, d_model).
    A batch larger than one call of the fused Mamba2 kernels can take runs in groups of samples.
    """

    def __init__(
        self, config: BackboneConfig, vocab_size: int | None = None, device=None, dtype=None
    ):
        super().__init__()
        self.config = config
        self.impl = resolve_impl(config.impl)
        kernels = self.impl == "fused"
        factory = {"device": device, "dtype": dtype}
        self.residual_in_fp32 = config.residual_in_fp32
        if vocab_size is not None:
            multiple = config.pad_vocab_size_multiple
            vocab_size = math.ceil(vocab_size / multiple) * multiple
            self.embedding = nn.Embedding(vocab_size, config.d_model, **factory)
        else:
            self.embedding = None
        self.layers = nn.ModuleList(
            create_block(config, i, kernels, **factory) for i in range(config.n_layer)
        )
        self.norm_f = mixers.RMSNorm(
            config.d_model, eps=config.norm_epsilon, kernels=kernels, **factory
        )
        n_res = 2 if config.d_intermediate else 1
        self.apply(partial(_init_weights, n_layer=config.n_layer, n_residuals_per_layer=n_res))
        fused_ssd = self.impl == "fused" and config.mixer == "Mamba2"
        self.max_rows = SSD_MAX_ROWS if fused_ssd else None  # (sample, chunk) pairs per call

    def samples_per_call(self, length: int) -> int | None:
        """How many samples of `length` tokens one kernel call takes; None: any number."""
        if self.max_rows is None:
            return None
        chunk = self.config.chunk
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
        if self.config.embedding_multiplier != 1:
            hidden = hidden * self.config.embedding_multiplier
        residual = None
        for layer in self.layers:
            hidden, residual = layer(hidden, residual, inference_params=inference_params)
        hidden = self.norm_f(
            hidden, residual=residual, prenorm=False, residual_in_fp32=self.residual_in_fp32
        )
        return hidden if self.config.logits_scaling == 1 else hidden / self.config.logits_scaling
