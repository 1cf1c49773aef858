"""Mamba2: the SSD mixer, mamba_ssm.modules.mamba2.Mamba2's twin.

The same constructor arguments, parameter names, shapes, initialisation (down to the order of
the random draws) and `_no_weight_decay` marks as mamba-ssm's class, so state_dicts move
between the two with strict=True. It computes through `ops`: on a GPU with the kernels the
whole layer is mamba-ssm's `mamba_split_conv1d_scan_combined` (use_mem_eff_path), and the
prompt of a decode and every decoded token go through the kernels one by one, which on the CPU
are the plain-PyTorch scans of scan.py.
"""

import torch
from torch import Tensor, nn

from .. import ops
from .layers import GatedRMSNorm, RecurrentMixer, fill_conv_state, inverse_softplus_dt


class Mamba2(RecurrentMixer):
    """The SSD mixer (Mamba2): scalar decay per head, B/C shared within groups of heads.

    kernels: use the fused kernels when the input is on a CUDA device (the backbone sets it
    from backbone.impl); the math is the same either way. norm_eps: the gated norm's epsilon
    (mamba-ssm fixes it at 1e-5; HF's Mamba2, Bamba and Granite use the model's).
    """

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
        kernels: bool = True,
        norm_eps: float = 1e-5,
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
        self.use_mem_eff_path, self.layer_idx, self.kernels = use_mem_eff_path, layer_idx, kernels

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
            inverse_softplus_dt(self.nheads, dt_min, dt_max, dt_init_floor, **factory)
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
        group = self.d_inner // ngroups
        self.norm = GatedRMSNorm(self.d_inner, norm_eps, group, kernels=kernels, **factory)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    def _split(self, zxbcdt: Tensor):
        gn = self.ngroups * self.d_state
        return zxbcdt.split([self.d_inner, self.d_inner + 2 * gn, self.nheads], dim=-1)

    def _conv_weight(self) -> Tensor:
        return self.conv1d.weight.squeeze(1)  # (conv_dim, d_conv)

    def _heads(self, xBC: Tensor):
        """conv output (..., d_inner + 2 G N) -> x (..., H, P), B and C (..., G, N)."""
        gn = self.ngroups * self.d_state
        x, B, C = xBC.split([self.d_inner, gn, gn], dim=-1)
        groups = (self.ngroups, self.d_state)
        return (
            x.unflatten(-1, (self.nheads, self.headdim)),
            B.unflatten(-1, groups),
            C.unflatten(-1, groups),
        )

    def _forward(self, u: Tensor, conv_state=None, ssm_state=None, A_state=None) -> Tensor:
        """u (B, L, d_model) -> (B, L, d_model); given states are filled from the sequence."""
        zxbcdt = self.in_proj(u)  # (B, L, d_in_proj)
        A = -torch.exp(ops.up(self.A_log))  # (H,)
        if A_state is not None:  # kept for the steps: two kernels less per layer and token
            A_state.copy_(A)
        if self.use_mem_eff_path and ops.fused_layer(self.kernels, u) and conv_state is None:
            return ops.mamba_split_conv1d_scan(
                zxbcdt, self._conv_weight(), self.conv1d.bias, self.dt_bias, A, self.D,
                self.chunk_size, self.norm.weight, self.norm.eps, self.out_proj.weight,
                self.out_proj.bias, self.headdim, self.ngroups,
            )  # fmt: skip
        z, xBC, dt = self._split(zxbcdt)
        fill_conv_state(conv_state, xBC)
        xBC = ops.causal_conv1d(xBC, self._conv_weight(), self.conv1d.bias, kernels=self.kernels)
        x, B, C = self._heads(xBC)
        y = ops.ssd_scan(
            x, dt, A, B, C, self.chunk_size, D=ops.up(self.D), dt_bias=self.dt_bias,
            return_final_state=ssm_state is not None, kernels=self.kernels,
        )  # fmt: skip
        if ssm_state is not None:
            y, last_state = y
            ssm_state.copy_(last_state)
        y = self.norm(y.flatten(-2), z)  # (B, L, d_inner)
        return self.out_proj(y)

    def step(self, u: Tensor, conv_state: Tensor, ssm_state: Tensor, A: Tensor):
        """One token: u (B, 1, d_model) -> (B, 1, d_model); the states advance in place.
        A = -exp(A_log) as the prompt's forward left it in the cache."""
        z, xBC, dt = self._split(self.in_proj(u.squeeze(1)))
        xBC = ops.causal_conv1d_step(
            xBC, conv_state, self._conv_weight(), self.conv1d.bias, kernels=self.kernels
        )
        x, B, C = self._heads(xBC)
        y = ops.ssd_state_step(
            ssm_state, x, dt, A, B, C, self.D, self.dt_bias, kernels=self.kernels
        )  # (B, H, P)
        y = self.norm(y.flatten(-2), z)
        return self.out_proj(y).unsqueeze(1), conv_state, ssm_state, A

    def allocate_inference_cache(self, batch_size, max_seqlen, dtype=None, **kwargs):
        """The decoding state of `batch_size` sequences: the conv window (B, conv_dim, d_conv)
        and the SSM state (B, H, P, N), in mamba-ssm's layout, and A = -exp(A_log) (H,),
        which the prompt's forward fills and every step reads."""
        device = self.out_proj.weight.device
        conv_dim = self.conv1d.weight.shape[0]
        conv_dtype = dtype or self.conv1d.weight.dtype
        conv_state = torch.zeros(batch_size, conv_dim, self.d_conv, device=device, dtype=conv_dtype)
        shape = (batch_size, self.nheads, self.headdim, self.d_state)
        ssm_state = torch.zeros(shape, device=device, dtype=dtype or self.in_proj.weight.dtype)
        A = torch.zeros(self.nheads, device=device, dtype=ops.up(self.A_log).dtype)
        return conv_state, ssm_state, A
