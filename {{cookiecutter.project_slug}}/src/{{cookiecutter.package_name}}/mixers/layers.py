"""What every block shares: the norms, the MLP, the block itself, and the mixers' plumbing.

    RMSNorm       mamba_ssm.ops.triton.layer_norm.RMSNorm     (with the fused residual add)
    GatedRMSNorm  mamba_ssm.ops.triton.layernorm_gated.RMSNorm
    GatedMLP      mamba_ssm.modules.mlp.GatedMLP
    Block         mamba_ssm.modules.block.Block      (Add -> Norm -> Mixer [-> Add -> Norm -> MLP])

Same constructor arguments, parameter names, shapes and initialisation as the mamba-ssm
namesakes, so state_dicts move between the two with strict=True. The norms compute through
`ops` (Triton on a GPU, plain PyTorch elsewhere).
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops


class RMSNorm(nn.Module):
    """RMSNorm with mamba-ssm's fused-add calling convention.

    `norm(x, residual, prenorm=True)` adds the residual stream first and returns both the
    normalised output and the new residual, which is how `Block` chains layers.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-5, kernels: bool = True,
                 device=None, dtype=None):  # fmt: skip
        super().__init__()
        self.eps, self.kernels = eps, kernels
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.register_parameter("bias", None)

    def forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
        return ops.rms_norm(
            x, self.weight, self.eps, residual, prenorm, residual_in_fp32, kernels=self.kernels
        )


class GatedRMSNorm(nn.Module):
    """RMSNorm(y * silu(z)) per group of channels (Mamba2's output norm); with
    norm_before_gate, RMSNorm(y) * silu(z); without z, the plain RMSNorm per group."""

    def __init__(
        self,
        hidden_size: int,
        eps: float = 1e-5,
        group_size: int | None = None,
        norm_before_gate: bool = False,
        kernels: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.eps, self.group_size, self.norm_before_gate = eps, group_size, norm_before_gate
        self.kernels = kernels
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.register_parameter("bias", None)

    def forward(self, y: Tensor, z: Tensor | None = None) -> Tensor:
        return ops.gated_rms_norm(
            y, z, self.weight, self.eps, self.group_size, self.norm_before_gate,
            kernels=self.kernels,
        )  # fmt: skip


class GatedMLP(nn.Module):
    """SwiGLU feed-forward: fc2(a * silu(gate)) with [a, gate] = fc1(x)."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        bias: bool = False,
        multiple_of: int = 128,
        device=None,
        dtype=None,
    ):
        super().__init__()
        out_features = out_features or in_features
        hidden = hidden_features or int(8 * in_features / 3)
        hidden = math.ceil(hidden / multiple_of) * multiple_of
        self.fc1 = nn.Linear(in_features, 2 * hidden, bias=bias, device=device, dtype=dtype)
        self.fc2 = nn.Linear(hidden, out_features, bias=bias, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        a, gate = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(a * F.silu(gate))


class Block(nn.Module):
    """Add -> Norm -> Mixer, then optionally Add -> Norm -> MLP.

    Returns (hidden, residual): the residual stream is carried separately so the add can be
    fused with the next norm, exactly as mamba-ssm's Block does.
    """

    def __init__(
        self, dim, mixer_cls, mlp_cls, norm_cls=RMSNorm, residual_in_fp32=False,
        residual_multiplier=1.0,
    ):  # fmt: skip
        super().__init__()
        self.residual_in_fp32 = residual_in_fp32
        self.residual_multiplier = residual_multiplier  # scales what joins the residual stream
        self.norm = norm_cls(dim)
        self.mixer = mixer_cls(dim)
        if mlp_cls is not nn.Identity:
            self.norm2 = norm_cls(dim)
            self.mlp = mlp_cls(dim)
        else:
            self.mlp = None

    def forward(self, hidden_states, residual=None, inference_params=None):
        hidden_states, residual = self.norm(
            hidden_states, residual, prenorm=True, residual_in_fp32=self.residual_in_fp32
        )
        hidden_states = self._scaled(self.mixer(hidden_states, inference_params=inference_params))
        if self.mlp is not None:
            hidden_states, residual = self.norm2(
                hidden_states, residual, prenorm=True, residual_in_fp32=self.residual_in_fp32
            )
            hidden_states = self._scaled(self.mlp(hidden_states))
        return hidden_states, residual

    def _scaled(self, out: Tensor) -> Tensor:
        return out if self.residual_multiplier == 1 else out * self.residual_multiplier

    def allocate_inference_cache(self, batch_size, max_seqlen, dtype=None, **kwargs):
        return self.mixer.allocate_inference_cache(batch_size, max_seqlen, dtype=dtype)


def inverse_softplus_dt(size: int, dt_min: float, dt_max: float, floor: float, device, dtype):
    """Step sizes log-uniform in [dt_min, dt_max], as the bias whose softplus gives them."""
    dt = torch.exp(
        torch.rand(size, device=device, dtype=dtype) * (math.log(dt_max) - math.log(dt_min))
        + math.log(dt_min)
    ).clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))


class RecurrentMixer(nn.Module):
    """What a mixer's `forward` does with `inference_params`, the same for every mixer.

    A mixer keeps its recurrent state in `inference_params.key_value_memory_dict[layer_idx]`
    (made by its `allocate_inference_cache` on first use). The first call (seqlen_offset 0)
    runs the parallel forward over the prompt and leaves the state behind; later calls are
    one token each and go to `step`. Subclasses write `_forward(u, *states)` and `step`.
    """

    def forward(self, u: Tensor, inference_params=None, **kwargs) -> Tensor:
        """u: (B, L, d_model) -> (B, L, d_model)."""
        if inference_params is None:
            return self._forward(u)
        cache = inference_params.key_value_memory_dict
        if self.layer_idx not in cache:
            cache[self.layer_idx] = self.allocate_inference_cache(u.shape[0], None)
        states = cache[self.layer_idx]
        if inference_params.seqlen_offset > 0:
            return self.step(u, *states)[0]
        return self._forward(u, *states)


def fill_conv_state(conv_state: Tensor | None, x: Tensor) -> None:
    """Keep the last W inputs (B, L, C) of a causal conv as its (B, C, W) decoding state."""
    if conv_state is not None:
        x = x.transpose(1, 2)
        conv_state.copy_(F.pad(x, (conv_state.shape[-1] - x.shape[-1], 0)))
