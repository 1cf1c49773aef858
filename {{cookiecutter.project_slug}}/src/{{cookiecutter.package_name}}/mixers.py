"""Pure-PyTorch twins of mamba-ssm 2.3.2.post1's building blocks.

Every class here has the same constructor arguments, submodule names, parameter shapes, dtypes,
initialisation (down to the order in which random numbers are drawn) and `_no_weight_decay`
marks as its mamba-ssm namesake, so a state_dict moves between the two with `strict=True`:

    Mamba      mamba_ssm.modules.mamba_simple.Mamba     (selective scan, "Mamba1")
    Mamba2     mamba_ssm.modules.mamba2.Mamba2          (SSD)
    GatedMLP   mamba_ssm.modules.mlp.GatedMLP
    RMSNorm    mamba_ssm.ops.triton.layer_norm.RMSNorm
    Block      mamba_ssm.modules.block.Block      (Add -> Norm -> Mixer [-> Add -> Norm -> MLP])

They run anywhere PyTorch runs. The scans themselves live in `scan.py`.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .scan import selective_scan, selective_state_step, ssd_scan, ssd_state_step


def _up(t: Tensor) -> Tensor:
    """At least float32: half precision goes up, float64 (used by precision checks) stays."""
    return t if t.dtype == torch.float64 else t.float()


class RMSNorm(nn.Module):
    """RMSNorm with mamba-ssm's fused-add calling convention.

    `norm(x, residual, prenorm=True)` adds the residual stream first and returns both the
    normalised output and the new residual, which is how `Block` chains layers.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.register_parameter("bias", None)

    def forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
        if residual is not None:
            x = x + residual
        residual = _up(x) if residual_in_fp32 else x
        xf = _up(x)
        out = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + self.eps)
        out = (out * _up(self.weight)).to(x.dtype)
        return (out, residual) if prenorm else out


class GatedRMSNorm(nn.Module):
    """Mamba2's output norm: RMSNorm(y * silu(z)) computed per group of channels."""

    def __init__(
        self,
        hidden_size: int,
        eps: float = 1e-5,
        group_size: int | None = None,
        norm_before_gate: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if norm_before_gate:
            raise ValueError("GatedRMSNorm: norm_before_gate=True is not supported; use False")
        self.eps = eps
        self.group_size = group_size or hidden_size
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.register_parameter("bias", None)

    def forward(self, y: Tensor, z: Tensor) -> Tensor:
        dtype = y.dtype
        y = _up(y) * F.silu(_up(z))  # (B, L, D)
        groups = y.unflatten(-1, (-1, self.group_size))  # (B, L, G, D/G)
        groups = groups * torch.rsqrt(groups.square().mean(-1, keepdim=True) + self.eps)
        return (groups.flatten(-2) * _up(self.weight)).to(dtype)


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
        self,
        dim,
        mixer_cls,
        mlp_cls,
        norm_cls=RMSNorm,
        fused_add_norm=False,
        residual_in_fp32=False,
    ):
        super().__init__()
        self.residual_in_fp32 = residual_in_fp32
        self.norm = norm_cls(dim)
        self.mixer = mixer_cls(dim)
        if mlp_cls is not nn.Identity:
            self.norm2 = norm_cls(dim)
            self.mlp = mlp_cls(dim)
        else:
            self.mlp = None

    def forward(self, hidden_states, residual=None, inference_params=None, **mixer_kwargs):
        hidden_states, residual = self.norm(
            hidden_states, residual, prenorm=True, residual_in_fp32=self.residual_in_fp32
        )
        hidden_states = self.mixer(hidden_states, inference_params=inference_params)
        if self.mlp is not None:
            hidden_states, residual = self.norm2(
                hidden_states, residual, prenorm=True, residual_in_fp32=self.residual_in_fp32
            )
            hidden_states = self.mlp(hidden_states)
        return hidden_states, residual

    def allocate_inference_cache(self, batch_size, max_seqlen, dtype=None, **kwargs):
        return self.mixer.allocate_inference_cache(batch_size, max_seqlen, dtype=dtype)


# --------------------------------------------------------------------------------------------
# Shared pieces of the two mixers
# --------------------------------------------------------------------------------------------


def _inverse_softplus_dt(size: int, dt_min: float, dt_max: float, floor: float, device, dtype):
    """Step sizes log-uniform in [dt_min, dt_max], as the bias whose softplus gives them."""
    dt = torch.exp(
        torch.rand(size, device=device, dtype=dtype) * (math.log(dt_max) - math.log(dt_min))
        + math.log(dt_min)
    ).clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))


def _causal_conv(x: Tensor, conv: nn.Conv1d, conv_state: Tensor | None) -> Tensor:
    """Depthwise causal conv + SiLU over (B, L, C); stores the last inputs in conv_state."""
    x = x.transpose(1, 2)  # (B, C, L)
    if conv_state is not None:
        conv_state.copy_(F.pad(x, (conv_state.shape[-1] - x.shape[-1], 0)))
    return F.silu(conv(x)[..., : x.shape[-1]]).transpose(1, 2)


def _causal_conv_step(x: Tensor, conv: nn.Conv1d, conv_state: Tensor) -> Tensor:
    """One token of the causal conv: x (B, C); conv_state (B, C, W) is shifted in place."""
    conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
    conv_state[:, :, -1] = x
    out = (conv_state * conv.weight.squeeze(1)).sum(-1)
    if conv.bias is not None:
        out = out + conv.bias
    return F.silu(out).to(x.dtype)


class _Mixer(nn.Module):
    """Recurrent-state plumbing shared by Mamba and Mamba2."""

    def _states(self, inference_params, batch_size):
        cache = inference_params.key_value_memory_dict
        if self.layer_idx not in cache:
            cache[self.layer_idx] = self.allocate_inference_cache(batch_size, None)
        return cache[self.layer_idx]

    def forward(self, u: Tensor, inference_params=None, **kwargs) -> Tensor:
        """u: (B, L, d_model) -> (B, L, d_model). With inference_params the state is kept."""
        conv_state = ssm_state = None
        if inference_params is not None:
            conv_state, ssm_state = self._states(inference_params, u.shape[0])
            if inference_params.seqlen_offset > 0:
                return self.step(u, conv_state, ssm_state)[0]
        return self._forward(u, conv_state, ssm_state)


# --------------------------------------------------------------------------------------------
# Mamba1
# --------------------------------------------------------------------------------------------


class Mamba(_Mixer):
    """The selective-scan mixer (Mamba1)."""

    def __init__(
        self,
        d_model,
        d_state=16,
        d_conv=4,
        expand=2,
        dt_rank="auto",
        dt_min=0.001,
        dt_max=0.1,
        dt_init="random",
        dt_scale=1.0,
        dt_init_floor=1e-4,
        conv_bias=True,
        bias=False,
        use_fast_path=True,
        layer_idx=None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.layer_idx = layer_idx

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory)
        self.conv1d = nn.Conv1d(
            self.d_inner,
            self.d_inner,
            d_conv,
            groups=self.d_inner,
            padding=d_conv - 1,
            bias=conv_bias,
            **factory,
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)

        # dt_proj keeps the variance of dt at init; its bias puts softplus(dt) in [dt_min, dt_max]
        dt_init_std = self.dt_rank**-0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, dt_init_std)
        elif dt_init == "random":
            nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        else:
            raise ValueError(f"Mamba: dt_init={dt_init!r} is unknown; use 'random' or 'constant'")
        with torch.no_grad():
            self.dt_proj.bias.copy_(
                _inverse_softplus_dt(self.d_inner, dt_min, dt_max, dt_init_floor, **factory)
            )
        self.dt_proj.bias._no_reinit = True  # the model-level init zeroes every other bias

        # S4D-real init: A[d, n] = -(n + 1), stored as log(-A) in float32
        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))  # float32
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    def _ssm_inputs(self, x: Tensor):
        """x (..., d_inner) -> dt (..., d_inner) after softplus, B and C (..., d_state)."""
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(_up(F.linear(dt, self.dt_proj.weight)) + _up(self.dt_proj.bias))
        return dt, B, C

    def _forward(self, u, conv_state, ssm_state):
        x, z = self.in_proj(u).chunk(2, dim=-1)  # (B, L, d_inner) each
        x = _causal_conv(x, self.conv1d, conv_state)
        dt, B, C = self._ssm_inputs(x)
        A = -torch.exp(_up(self.A_log))  # (d_inner, d_state)
        y = selective_scan(
            x,
            dt,
            A,
            B,
            C,
            _up(self.D),
            z=z,
            return_final_state=ssm_state is not None,
        )
        if ssm_state is not None:
            y, last_state = y
            ssm_state.copy_(last_state)
        return self.out_proj(y)

    def step(self, u, conv_state, ssm_state):
        """One token: u (B, 1, d_model); states updated in place."""
        x, z = self.in_proj(u.squeeze(1)).chunk(2, dim=-1)  # (B, d_inner)
        x = _causal_conv_step(x, self.conv1d, conv_state)
        dt, B, C = self._ssm_inputs(x)
        A = -torch.exp(_up(self.A_log))
        y, state = selective_state_step(_up(ssm_state), _up(x), dt, A, _up(B), _up(C), _up(self.D))
        ssm_state.copy_(state)
        y = (y * F.silu(_up(z))).to(u.dtype)
        return self.out_proj(y).unsqueeze(1), conv_state, ssm_state

    def allocate_inference_cache(self, batch_size, max_seqlen, dtype=None, **kwargs):
        device = self.out_proj.weight.device
        conv_state = torch.zeros(
            batch_size,
            self.d_inner,
            self.d_conv,
            device=device,
            dtype=dtype or self.conv1d.weight.dtype,
        )
        ssm_state = torch.zeros(
            batch_size,
            self.d_inner,
            self.d_state,
            device=device,
            dtype=dtype or self.dt_proj.weight.dtype,
        )
        return conv_state, ssm_state


# --------------------------------------------------------------------------------------------
# Mamba2
# --------------------------------------------------------------------------------------------


class Mamba2(_Mixer):
    """The SSD mixer (Mamba2): scalar decay per head, B/C shared within groups of heads."""

    def __init__(
        self,
        d_model,
        d_state=128,
        d_conv=4,
        conv_init=None,
        expand=2,
        headdim=64,
        d_ssm=None,
        ngroups=1,
        A_init_range=(1, 16),
        D_has_hdim=False,
        rmsnorm=True,
        norm_before_gate=False,
        dt_min=0.001,
        dt_max=0.1,
        dt_init_floor=1e-4,
        dt_limit=(0.0, float("inf")),
        bias=False,
        conv_bias=True,
        chunk_size=256,
        use_mem_eff_path=True,
        layer_idx=None,
        process_group=None,
        sequence_parallel=True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        unsupported = {
            "d_ssm": (d_ssm, None),
            "D_has_hdim": (D_has_hdim, False),
            "rmsnorm": (rmsnorm, True),
            "norm_before_gate": (norm_before_gate, False),
            "process_group": (process_group, None),
            "dt_limit": (tuple(dt_limit), (0.0, float("inf"))),
        }
        for name, (value, default) in unsupported.items():
            if value != default:
                raise ValueError(f"Mamba2: {name}={value!r} is not supported here; use {default!r}")
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = self.d_ssm = expand * d_model
        self.headdim, self.ngroups, self.chunk_size = headdim, ngroups, chunk_size
        self.nheads = self.d_inner // headdim  # BackboneConfig checks that both divide
        self.layer_idx = layer_idx

        # in_proj packs [z, x, B, C, dt]
        d_in_proj = 2 * self.d_inner + 2 * ngroups * d_state + self.nheads
        self.in_proj = nn.Linear(d_model, d_in_proj, bias=bias, **factory)
        conv_dim = self.d_inner + 2 * ngroups * d_state
        self.conv1d = nn.Conv1d(
            conv_dim,
            conv_dim,
            d_conv,
            groups=conv_dim,
            padding=d_conv - 1,
            bias=conv_bias,
            **factory,
        )
        if conv_init is not None:
            nn.init.uniform_(self.conv1d.weight, -conv_init, conv_init)

        self.dt_bias = nn.Parameter(
            _inverse_softplus_dt(self.nheads, dt_min, dt_max, dt_init_floor, **factory)
        )
        self.dt_bias._no_weight_decay = True
        low, high = A_init_range
        if not 0 < low <= high:
            raise ValueError(f"Mamba2: A_init_range={A_init_range!r} must satisfy 0 < low <= high")
        A = torch.empty(self.nheads, dtype=torch.float32, device=device).uniform_(low, high)
        self.A_log = nn.Parameter(torch.log(A).to(dtype=dtype))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.nheads, device=device))
        self.D._no_weight_decay = True
        self.norm = GatedRMSNorm(
            self.d_inner, eps=1e-5, group_size=self.d_inner // ngroups, **factory
        )
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    def _split(self, zxbcdt: Tensor):
        gn = self.ngroups * self.d_state
        return zxbcdt.split([self.d_inner, self.d_inner + 2 * gn, self.nheads], dim=-1)

    def _forward(self, u, conv_state, ssm_state):
        batch, length, _ = u.shape
        z, xBC, dt = self._split(self.in_proj(u))
        xBC = _causal_conv(xBC, self.conv1d, conv_state)
        gn = self.ngroups * self.d_state
        x, B, C = xBC.split([self.d_inner, gn, gn], dim=-1)
        dt = F.softplus(_up(dt) + _up(self.dt_bias))  # (B, L, H)
        A = -torch.exp(_up(self.A_log))  # (H,)
        y = ssd_scan(
            x.unflatten(-1, (self.nheads, self.headdim)),
            dt,
            A,
            B.unflatten(-1, (self.ngroups, self.d_state)),
            C.unflatten(-1, (self.ngroups, self.d_state)),
            D=_up(self.D),
            chunk_size=self.chunk_size,
            return_final_state=ssm_state is not None,
        )
        if ssm_state is not None:
            y, last_state = y
            ssm_state.copy_(last_state)
        y = self.norm(y.flatten(-2), z)  # (B, L, d_inner)
        return self.out_proj(y)

    def step(self, u, conv_state, ssm_state):
        """One token: u (B, 1, d_model); states updated in place."""
        z, xBC, dt = self._split(self.in_proj(u.squeeze(1)))
        xBC = _causal_conv_step(xBC, self.conv1d, conv_state)
        gn = self.ngroups * self.d_state
        x, B, C = _up(xBC).split([self.d_inner, gn, gn], dim=-1)
        dt = F.softplus(_up(dt) + _up(self.dt_bias))  # (B, H)
        A = -torch.exp(_up(self.A_log))
        y, state = ssd_state_step(
            _up(ssm_state),
            x.unflatten(-1, (self.nheads, self.headdim)),
            dt,
            A,
            B.unflatten(-1, (self.ngroups, self.d_state)),
            C.unflatten(-1, (self.ngroups, self.d_state)),
            _up(self.D),
        )
        ssm_state.copy_(state)
        y = self.norm(y.flatten(-2).to(u.dtype), z)
        return self.out_proj(y).unsqueeze(1), conv_state, ssm_state

    def allocate_inference_cache(self, batch_size, max_seqlen, dtype=None, **kwargs):
        device = self.out_proj.weight.device
        conv_dim = self.conv1d.weight.shape[0]
        conv_state = torch.zeros(
            batch_size,
            conv_dim,
            self.d_conv,
            device=device,
            dtype=dtype or self.conv1d.weight.dtype,
        )
        ssm_state = torch.zeros(
            batch_size,
            self.nheads,
            self.headdim,
            self.d_state,
            device=device,
            dtype=dtype or self.in_proj.weight.dtype,
        )
        return conv_state, ssm_state
