"""Mamba1: the selective-scan mixer, mamba_ssm.modules.mamba_simple.Mamba's twin.

The same constructor arguments, parameter names, shapes, initialisation (down to the order of
the random draws) and `_no_weight_decay` marks as mamba-ssm's class, so state_dicts move
between the two with strict=True. It computes through `ops`: on a GPU with the kernels the
whole layer is mamba-ssm's `mamba_inner_fn` (use_fast_path), and the prompt of a decode and
every decoded token go through causal-conv1d's and mamba-ssm's kernels one by one, which on the
CPU are the plain-PyTorch scans of scan.py.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from .layers import RecurrentMixer, fill_conv_state, inverse_softplus_dt


class Mamba(RecurrentMixer):
    """The selective-scan mixer (Mamba1).

    kernels: use the fused kernels when the input is on a CUDA device (the backbone sets it
    from backbone.impl); the math is the same either way.
    """

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
        kernels: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.use_fast_path, self.layer_idx, self.kernels = use_fast_path, layer_idx, kernels

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
                inverse_softplus_dt(self.d_inner, dt_min, dt_max, dt_init_floor, **factory)
            )
        self.dt_proj.bias._no_reinit = True  # the model-level init zeroes every other bias

        # S4D-real init: A[d, n] = -(n + 1), stored as log(-A) in float32
        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))  # float32
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    def _conv_weight(self) -> Tensor:
        return self.conv1d.weight.squeeze(1)  # (d_inner, d_conv)

    def _forward(self, u: Tensor, conv_state=None, ssm_state=None, A_state=None) -> Tensor:
        """u (B, L, d_model) -> (B, L, d_model); given states are filled from the sequence."""
        A = -torch.exp(ops.up(self.A_log))  # (d_inner, d_state)
        if A_state is not None:  # kept for the steps: two kernels less per layer and token
            A_state.copy_(A)
        if self.use_fast_path and ops.fused_layer(self.kernels, u) and conv_state is None:
            # in_proj written straight into the (B, 2 * d_inner, L) layout the kernel reads
            xz = (self.in_proj.weight @ u.flatten(0, 1).T).unflatten(1, u.shape[:2])
            xz = xz.transpose(0, 1)  # (B, 2 * d_inner, L)
            if self.in_proj.bias is not None:
                xz = xz + self.in_proj.bias.to(xz.dtype)[:, None]
            return ops.mamba_inner(
                xz, self.conv1d.weight, self.conv1d.bias, self.x_proj.weight,
                self.dt_proj.weight, self.out_proj.weight, self.out_proj.bias, A, self.D,
                self.dt_proj.bias,
            )  # fmt: skip
        x, z = self.in_proj(u).chunk(2, dim=-1)  # (B, L, d_inner) each
        fill_conv_state(conv_state, x)
        x = ops.causal_conv1d(x, self._conv_weight(), self.conv1d.bias, kernels=self.kernels)
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # (B, L, d_inner); its bias joins in the scan
        y = ops.selective_scan(
            x, dt, A, B, C, ops.up(self.D), z=z, dt_bias=self.dt_proj.bias,
            return_final_state=ssm_state is not None, kernels=self.kernels,
        )  # fmt: skip
        if ssm_state is not None:
            y, last_state = y
            ssm_state.copy_(last_state)
        return self.out_proj(y)

    def step(self, u: Tensor, conv_state: Tensor, ssm_state: Tensor, A: Tensor):
        """One token: u (B, 1, d_model) -> (B, 1, d_model); the states advance in place.
        A = -exp(A_log) as the prompt's forward left it in the cache."""
        x, z = self.in_proj(u.squeeze(1)).chunk(2, dim=-1)  # (B, d_inner)
        x = ops.causal_conv1d_step(
            x, conv_state, self._conv_weight(), self.conv1d.bias, kernels=self.kernels
        )
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # (B, d_inner)
        y = ops.selective_state_step(
            ssm_state, x, dt, A, B, C, self.D, z=z, dt_bias=self.dt_proj.bias,
            kernels=self.kernels,
        )  # fmt: skip
        return self.out_proj(y).unsqueeze(1), conv_state, ssm_state, A

    def allocate_inference_cache(self, batch_size, max_seqlen, dtype=None, **kwargs):
        """The decoding state of `batch_size` sequences: the conv window (B, d_inner, d_conv)
        and the SSM state (B, d_inner, d_state), in mamba-ssm's layout, and A = -exp(A_log)
        (d_inner, d_state), which the prompt's forward fills and every step reads."""
        device = self.out_proj.weight.device
        conv_dtype = dtype or self.conv1d.weight.dtype
        conv_state = torch.zeros(
            batch_size, self.d_inner, self.d_conv, device=device, dtype=conv_dtype
        )
        ssm_dtype = dtype or self.dt_proj.weight.dtype
        ssm_state = torch.zeros(
            batch_size, self.d_inner, self.d_state, device=device, dtype=ssm_dtype
        )
        A = torch.zeros_like(self.A_log, dtype=ops.up(self.A_log).dtype)
        return conv_state, ssm_state, A
