"""The one seam between the layers and the kernels: each operation, one signature, two bodies.

Every layer in `mixers/` computes through these functions and never imports a kernel library.
With `kernels=True` and an input on a CUDA device, a function runs the fused kernel of
mamba-ssm or causal-conv1d (imported only then, so the CPU never needs them); otherwise it runs
the plain-PyTorch version: the scans of `scan.py`, the convolution and norms written below.
Both bodies take and return the same shapes and dtypes, so a change to a layer's `forward`
runs on every device; the GPU tests check that the two bodies agree.

    rms_norm            x (..., D), optionally adding the residual stream first
    gated_rms_norm      RMSNorm(y * silu(z)) per group of channels (or norm(y) * silu(z))
    causal_conv1d       depthwise causal convolution + SiLU over (B, L, C)
    causal_conv1d_step  one token of it, shifting the (B, C, W) window in place
    selective_scan      Mamba1's scan over (B, L, D); selective_state_step: one token
    ssd_scan            Mamba2's chunked scan over (B, L, H, P); ssd_state_step: one token
    mamba3_siso         Mamba-3's scan (mamba-ssm's Triton kernel), mamba3_mimo: its MIMO form

The fully fused layer kernels (`mamba_inner`, `mamba_split_conv1d_scan`) have no second body:
a mixer calls them only where the kernels run, and its composed path is their reference.
`dt` always arrives before the softplus: the kernels add the bias and apply it in float32.
"""

import importlib.util
import logging
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor

from . import scan

log = logging.getLogger(__name__)


def up(t: Tensor) -> Tensor:
    """At least float32: half precision goes up, float64 (used by precision checks) stays."""
    return t if t.dtype == torch.float64 else t.float()


@cache
def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def use_kernel(kernels: bool, t: Tensor, package: str = "mamba_ssm") -> bool:
    """Whether to run the kernel: asked for, a CUDA input, and its package installed (where
    it is not, the kernel check has already said so, and the plain version runs)."""
    return kernels and t.is_cuda and _installed(package)


def _softplus_dt(dt: Tensor, dt_bias: Tensor | None) -> Tensor:
    dt = up(dt)
    return F.softplus(dt + up(dt_bias) if dt_bias is not None else dt)


# -------------------------------------------------------------------------------- norms


def rms_norm(
    x: Tensor,
    weight: Tensor,
    eps: float,
    residual: Tensor | None = None,
    prenorm: bool = False,
    residual_in_fp32: bool = False,
    *,
    kernels: bool,
):
    """RMSNorm(x + residual); with prenorm also the new residual stream (x + residual)."""
    if use_kernel(kernels, x):
        from mamba_ssm.ops.triton.layer_norm import rms_norm_fn

        return rms_norm_fn(
            x, weight, None, residual=residual, eps=eps, prenorm=prenorm,
            residual_in_fp32=residual_in_fp32,
        )  # fmt: skip
    if residual is not None:
        x = x + residual
    residual = up(x) if residual_in_fp32 else x
    xf = up(x)
    out = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)
    out = (out * up(weight)).to(x.dtype)
    return (out, residual) if prenorm else out


def gated_rms_norm(
    y: Tensor,
    z: Tensor | None,
    weight: Tensor,
    eps: float,
    group_size: int | None = None,
    norm_before_gate: bool = False,
    *,
    kernels: bool,
) -> Tensor:
    """RMSNorm(y * silu(z)) over groups of `group_size` channels (norm_before_gate: the norm of
    y, then * silu(z)); z None: the plain RMSNorm per group. Returns y's dtype."""
    if use_kernel(kernels, y):
        from mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn

        return rmsnorm_fn(
            y, weight, None, z=z, eps=eps, group_size=group_size, norm_before_gate=norm_before_gate
        )
    dtype = y.dtype
    y = up(y)
    if z is not None and not norm_before_gate:
        y = y * F.silu(up(z))  # (..., D)
    groups = y.unflatten(-1, (-1, group_size or y.shape[-1]))  # (..., G, D/G)
    groups = groups * torch.rsqrt(groups.square().mean(-1, keepdim=True) + eps)
    out = groups.flatten(-2) * up(weight)
    if z is not None and norm_before_gate:
        out = out * F.silu(up(z))
    return out.to(dtype)


# ------------------------------------------------------------------------ convolution


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None, *, kernels: bool) -> Tensor:
    """silu(depthwise causal conv): x (B, L, C), weight (C, W), bias (C,) -> (B, L, C)."""
    if use_kernel(kernels, x, "causal_conv1d"):
        from causal_conv1d import causal_conv1d_fn

        # (B, C, L) with channels innermost: causal-conv1d's channel-last layout, no copy
        return causal_conv1d_fn(x.transpose(1, 2), weight, bias, activation="silu").transpose(1, 2)
    width, length = weight.shape[-1], x.shape[1]
    out = F.conv1d(
        x.transpose(1, 2), weight.unsqueeze(1), bias, padding=width - 1, groups=len(weight)
    )
    return F.silu(out[..., :length]).transpose(1, 2)


def causal_conv1d_step(
    x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None, *, kernels: bool
) -> Tensor:
    """One token: x (B, C); conv_state (B, C, W) holds the last W inputs, shifted in place."""
    if use_kernel(kernels, x, "causal_conv1d"):
        from causal_conv1d import causal_conv1d_update

        return causal_conv1d_update(x, conv_state, weight, bias, "silu")
    conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
    conv_state[:, :, -1] = x
    out = (conv_state * weight).sum(-1)
    if bias is not None:
        out = out + bias
    return F.silu(out).to(x.dtype)


# --------------------------------------------------------------------- Mamba1's scan


def selective_scan(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    *,
    return_final_state: bool = False,
    kernels: bool,
):
    """x, dt, z (B, L, D); A (D, N); B, C (B, L, N); D, dt_bias (D,) -> y (B, L, D)
    [and the final state (B, D, N)], with dt -> softplus(dt + dt_bias)."""
    if use_kernel(kernels, x):
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        out = selective_scan_fn(
            x.transpose(1, 2), dt.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2), D,
            z=None if z is None else z.transpose(1, 2),
            delta_bias=None if dt_bias is None else dt_bias.float(),
            delta_softplus=True, return_last_state=return_final_state,
        )  # fmt: skip
        if return_final_state:
            return out[0].transpose(1, 2), out[1]
        return out.transpose(1, 2)
    return scan.selective_scan(
        x, _softplus_dt(dt, dt_bias), A, B, C, D, z=z, return_final_state=return_final_state
    )


def selective_state_step(
    state: Tensor,
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    *,
    kernels: bool,
) -> Tensor:
    """One token of Mamba1's scan: state (B, D, N) updated in place; x, dt, z (B, D);
    B, C (B, N) -> y (B, D) in x's dtype."""
    if use_kernel(kernels, x):
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update

        return selective_state_update(
            state, x, dt, A, B, C, D, z=z, dt_bias=dt_bias, dt_softplus=True
        )
    y, new = scan.selective_state_step(
        up(state), up(x), _softplus_dt(dt, dt_bias), A, up(B), up(C), D
    )
    state.copy_(new)
    if z is not None:
        y = y * F.silu(up(z))
    return y.to(x.dtype)


# ---------------------------------------------------------------------- Mamba2's scan


def ssd_scan(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int,
    D: Tensor | None = None,
    dt_bias: Tensor | None = None,
    *,
    return_final_state: bool = False,
    kernels: bool,
):
    """x (B, L, H, P); dt (B, L, H); A, D, dt_bias (H,); B, C (B, L, G, N)
    -> y (B, L, H, P) [and the final state (B, H, P, N)], dt -> softplus(dt + dt_bias)."""
    if use_kernel(kernels, x):
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

        out = mamba_chunk_scan_combined(
            x, dt, A, B, C, chunk_size, D=D, dt_bias=dt_bias, dt_softplus=True,
            return_final_states=return_final_state,
        )  # fmt: skip
        return tuple(out[:2]) if return_final_state else out
    return scan.ssd_scan(
        x, _softplus_dt(dt, dt_bias), A, B, C, D=D, chunk_size=chunk_size,
        return_final_state=return_final_state,
    )  # fmt: skip


def ssd_state_step(
    state: Tensor,
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    dt_bias: Tensor | None = None,
    *,
    kernels: bool,
) -> Tensor:
    """One token of SSD: state (B, H, P, N) updated in place; x (B, H, P); dt (B, H);
    A, D, dt_bias (H,); B, C (B, G, N) -> y (B, H, P) in x's dtype."""
    if use_kernel(kernels, x):
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update

        h, p, n = x.shape[1], x.shape[2], state.shape[-1]
        return selective_state_update(  # per head: dt, A, D and dt_bias shared by its p channels
            state, x, dt[:, :, None].expand(-1, h, p), A[:, None, None].expand(h, p, n), B, C,
            None if D is None else D[:, None].expand(h, p),
            dt_bias=None if dt_bias is None else dt_bias[:, None].expand(h, p), dt_softplus=True,
        )  # fmt: skip
    y, new = scan.ssd_state_step(up(state), up(x), _softplus_dt(dt, dt_bias), A, up(B), up(C), D)
    state.copy_(new)
    return y.to(x.dtype)


# ----------------------------------------------------------- fully fused layer kernels


def fused_layer(kernels: bool, u: Tensor) -> bool:
    """Whether a whole layer may run as one fused kernel (it needs mamba-ssm and causal-conv1d)."""
    return use_kernel(kernels, u) and _installed("causal_conv1d")


def mamba_inner(
    xz: Tensor,
    conv_weight: Tensor,
    conv_bias: Tensor | None,
    x_proj_weight: Tensor,
    dt_proj_weight: Tensor,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor | None,
    A: Tensor,
    D: Tensor,
    dt_bias: Tensor,
) -> Tensor:
    """Mamba1 from in_proj's output xz (B, 2D, L) to out_proj's (B, L, d_model), in one
    autograd function: mamba-ssm's mamba_inner_fn. CUDA only."""
    from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn

    return mamba_inner_fn(
        xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, out_proj_weight,
        out_proj_bias, A, None, None, D.float(), delta_bias=dt_bias.float(), delta_softplus=True,
    )  # fmt: skip


def mamba_split_conv1d_scan(
    zxbcdt: Tensor,
    conv_weight: Tensor,
    conv_bias: Tensor | None,
    dt_bias: Tensor,
    A: Tensor,
    D: Tensor,
    chunk_size: int,
    norm_weight: Tensor,
    norm_eps: float,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor | None,
    headdim: int,
    ngroups: int,
) -> Tensor:
    """Mamba2 from in_proj's output (B, L, d_in_proj) to out_proj's (B, L, d_model), in one
    autograd function: mamba-ssm's mamba_split_conv1d_scan_combined. CUDA only."""
    from mamba_ssm.ops.triton.ssd_combined import mamba_split_conv1d_scan_combined

    return mamba_split_conv1d_scan_combined(
        zxbcdt, conv_weight, conv_bias, dt_bias, A, D, chunk_size, activation="silu",
        rmsnorm_weight=norm_weight, rmsnorm_eps=norm_eps, outproj_weight=out_proj_weight,
        outproj_bias=out_proj_bias, headdim=headdim, ngroups=ngroups, norm_before_gate=False,
    )  # fmt: skip


# -------------------------------------------------------------------- Mamba-3's scans


@cache
def _say_once(message: str) -> None:
    log.warning(message)


@cache
def mamba3_kernel_problem(device: torch.device | None = None) -> str | None:
    """None when mamba-ssm's Mamba-3 SISO kernel (Triton) runs on `device` (the current CUDA
    device if None), else why not. Asked once per device: every layer's forward asks."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 9:
        return (
            f"{torch.cuda.get_device_name(device)} is sm_{major}{minor}; mamba-ssm's Mamba-3 "
            "kernels use Hopper's TMA (sm_90 or newer: H100, H200, B200)"
        )
    try:
        from mamba_ssm.ops.triton.mamba3.mamba3_siso_combined import (  # noqa: F401
            mamba3_siso_combined,
        )
    except ImportError as err:
        return f"{type(err).__name__}: {err}".splitlines()[0]
    return None


def mamba3_siso(
    Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, D=None, Z=None, Input_States=None,
    chunk_size=64, return_final_states=False, *, kernels: bool,
):  # fmt: skip
    """Mamba-3 (SISO) with mamba-ssm's `mamba3_siso_combined` arguments and results; the
    recurrence is written in scan.py. On a GPU its Triton kernel (Hopper only) for bfloat16
    inputs (bf16-mixed training, bf16 weights): it rounds Q, K, V, Trap and the angles to
    bfloat16 inside, so a float32 layer takes the plain-PyTorch scan and stays float32."""
    if use_kernel(kernels, V):
        problem = mamba3_kernel_problem(V.device)
        if problem is None and V.dtype != torch.bfloat16:
            problem = (
                f"its inputs are {V.dtype} and mamba-ssm's kernel computes in bfloat16 inside; "
                "use trainer.precision=bf16-mixed (or bf16 weights) for the kernel"
            )
        if problem is None:
            from mamba_ssm.ops.triton.mamba3.mamba3_siso_combined import mamba3_siso_combined

            return mamba3_siso_combined(
                Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, D, Z, Input_States,
                chunk_size=chunk_size, return_final_states=return_final_states,
            )  # fmt: skip
        _say_once(f"Mamba-3 runs its plain-PyTorch scan on the GPU (slow): {problem}")
    return scan.mamba3_scan(
        Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, D, Z, Input_States,
        chunk_size=chunk_size, return_final_states=return_final_states,
    )  # fmt: skip


def mamba3_mimo(
    Q, K, V, ADT, DT, Trap, Q_bias, K_bias, MIMO_V, MIMO_Z, MIMO_Out, Angles, D, Z,
    chunk_size, rotary_dim_divisor, dtype, return_state=False, *, kernels: bool,
):  # fmt: skip
    """Mamba-3 (MIMO) with mamba-ssm's `mamba3_mimo` arguments and results. Its fused kernel
    (TileLang; the image installs the pinned tilelang because mamba-ssm requires it) has not
    been verified against this scan on a GPU, so the plain-PyTorch scan runs everywhere."""
    args = (Q, K, V, ADT, DT, Trap, Q_bias, K_bias, MIMO_V, MIMO_Z, MIMO_Out, Angles, D, Z)
    if use_kernel(kernels, V):
        _say_once(
            "Mamba-3 MIMO runs its plain-PyTorch scan on the GPU (slow): its fused kernel "
            "(TileLang) is not verified against it"
        )
    return scan.mamba3_mimo_scan(
        *args, chunk_size, rotary_dim_divisor, dtype, return_state=return_state
    )
