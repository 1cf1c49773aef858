"""Mamba3: the Mamba-3 mixer, mamba_ssm.modules.mamba3.Mamba3's twin.

The same constructor arguments, parameter names, shapes, dtypes, initialisation (down to the
order of the random draws) and `_no_weight_decay` marks as mamba-ssm's class, so state_dicts
move between the two with strict=True. The scan goes through `ops` (mamba-ssm's Triton kernel
for SISO on a Hopper GPU, the plain-PyTorch `scan.mamba3_scan` / `scan.mamba3_mimo_scan`
elsewhere); decoding steps through `scan.mamba3_state_step` on every device.

What happens to one token (the recurrence itself is written out in scan.py):

    in_proj(u) -> z, x, B, C, dd_dt, dd_A, trap, angles
    DT = softplus(dd_dt + dt_bias);  ADT = min(-softplus(dd_A), -A_floor) * DT
    B, C = B_norm(B), C_norm(C)         RMSNorm over d_state, per rank and group
    y = Mamba-3 scan(q=C, k=B, v=x; C_bias, B_bias, D, z gate)
    out_proj(y)                         with is_outproj_norm: out_proj(norm(y) * silu(z))
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops, scan
from .layers import GatedRMSNorm, RecurrentMixer, inverse_softplus_dt


class Mamba3(RecurrentMixer):
    """The Mamba-3 mixer: SSD with a trapezoidal rule, rotated B/C, and optionally MIMO.

    rope_fraction: the share of d_state that rotates (0.5 or 1.0). is_mimo: mimo_rank inputs
    and outputs per head (mimo_x, mimo_z, mimo_o project x, z and the output). is_outproj_norm:
    a gated RMSNorm per head before out_proj, instead of the bare silu(z) gate.
    kernels: use the fused kernels when the input is on a CUDA device (the backbone sets it
    from backbone.impl); the math is the same either way. dropout and n_layer are accepted for
    mamba-ssm's config files and ignored, as there.
    """

    def __init__(
        self,
        d_model,
        d_state=128,
        expand=2,
        headdim=64,
        ngroups=1,
        rope_fraction=0.5,
        dt_min=0.001,
        dt_max=0.1,
        dt_init_floor=1e-4,
        A_floor=1e-4,
        is_outproj_norm=False,
        is_mimo=False,
        mimo_rank=4,
        chunk_size=64,
        dropout=0.0,
        layer_idx=None,
        n_layer=None,
        kernels: bool = True,
        device=None,
        dtype=None,
        **kwargs,
    ):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.expand, self.headdim = d_model, d_state, expand, headdim
        self.chunk_size, self.layer_idx, self.A_floor = chunk_size, layer_idx, A_floor
        self.is_outproj_norm, self.is_mimo, self.kernels = is_outproj_norm, is_mimo, kernels
        self.mimo_rank = mimo_rank if is_mimo else 1
        self.d_inner = int(expand * d_model)
        if self.d_inner % headdim:
            raise ValueError(
                f"Mamba3: d_inner = expand * d_model = {self.d_inner} is not a multiple of "
                f"headdim={headdim}; pick a headdim that divides it"
            )
        self.nheads = self.d_inner // headdim
        self.num_bc_heads = ngroups
        if rope_fraction not in (0.5, 1.0):
            raise ValueError(f"Mamba3: rope_fraction={rope_fraction!r} must be 0.5 or 1.0")
        self.rotary_dim_divisor = int(2 / rope_fraction)
        self.split_tensor_size = int(d_state * rope_fraction) // 2 * 2  # rotated dims, even
        self.num_rope_angles = self.split_tensor_size // 2
        if self.num_rope_angles == 0:
            raise ValueError(
                f"Mamba3: d_state={d_state} with rope_fraction={rope_fraction} rotates no pair "
                "of dims; use d_state >= 4"
            )

        # in_proj packs [z, x, B, C, dd_dt, dd_A, trap, angles]
        bc = d_state * ngroups * self.mimo_rank
        self._split_sizes = [self.d_inner, self.d_inner, bc, bc] + [self.nheads] * 3
        self._split_sizes.append(self.num_rope_angles)
        self.in_proj = nn.Linear(d_model, sum(self._split_sizes), bias=False, **factory)

        self.dt_bias = nn.Parameter(
            inverse_softplus_dt(
                self.nheads, dt_min, dt_max, dt_init_floor, device=device, dtype=torch.float32
            )
        )
        self.dt_bias._no_weight_decay = True
        bias_shape = (self.nheads, self.mimo_rank, d_state)
        self.B_bias = nn.Parameter(torch.ones(bias_shape, dtype=torch.float32, device=device))
        self.C_bias = nn.Parameter(torch.ones(bias_shape, dtype=torch.float32, device=device))
        self.B_norm = GatedRMSNorm(d_state, eps=1e-5, kernels=kernels, **factory)
        self.C_norm = GatedRMSNorm(d_state, eps=1e-5, kernels=kernels, **factory)
        if is_mimo:
            # (H, R, P), default dtype as in mamba-ssm: x is spread over the ranks and the
            # ranks are averaged back; z gates every rank alike
            shape = (self.nheads, self.mimo_rank, headdim)
            self.mimo_x = nn.Parameter(torch.ones(shape, device=device) / self.mimo_rank)
            self.mimo_z = nn.Parameter(torch.ones(shape, device=device))
            self.mimo_o = nn.Parameter(torch.ones(shape, device=device) / self.mimo_rank)
        self.D = nn.Parameter(torch.ones(self.nheads, device=device))
        self.D._no_weight_decay = True
        if is_outproj_norm:
            self.norm = GatedRMSNorm(
                self.d_inner, eps=1e-5, group_size=headdim, norm_before_gate=True,
                kernels=kernels, **factory,
            )  # fmt: skip
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False, **factory)

    def _project(self, u: Tensor):
        """u (B, L, d_model) -> the scan's inputs per token: z, x (B, L, H, P); B, C
        (B, L, R, G, N) after their norms; ADT, DT (B, L, H) at least float32; trap (B, L, H)
        before its sigmoid; angles (B, L, H, A) at least float32, before their tanh."""
        z, x, B, C, dd_dt, dd_A, trap, angles = self.in_proj(u).split(self._split_sizes, dim=-1)
        heads = (self.nheads, self.headdim)
        z, x = z.unflatten(-1, heads), x.unflatten(-1, heads)
        ranks = (self.mimo_rank, self.num_bc_heads, self.d_state)
        B, C = self.B_norm(B.unflatten(-1, ranks)), self.C_norm(C.unflatten(-1, ranks))
        A = (-F.softplus(ops.up(dd_A))).clamp(max=-self.A_floor)  # (B, L, H), below 0
        DT = F.softplus(dd_dt + self.dt_bias)  # float32 through dt_bias
        # every head turns by the same angles, at its own pace DT
        angles = ops.up(angles).unsqueeze(-2).expand(*angles.shape[:-1], self.nheads, -1)
        return z, x, B, C, A * DT, DT, trap, angles

    def _output(self, y: Tensor, z: Tensor) -> Tensor:
        """The scan's output -> (..., d_inner). With is_outproj_norm the scan left z out: the
        gated norm runs here, per rank for MIMO (y (..., R, H, P)), and mimo_o sums the ranks."""
        if not self.is_outproj_norm:
            return y.flatten(-2)
        if not self.is_mimo:
            return self.norm(y.flatten(-2), z.flatten(-2))
        z = ops.up(z).unsqueeze(-3) * self.mimo_z.transpose(0, 1)  # (..., R, H, P)
        y = self.norm(ops.up(y).flatten(-2), z.flatten(-2)).unflatten(-1, (self.nheads, -1))
        return (y * self.mimo_o.transpose(0, 1)).sum(-3).flatten(-2)

    def _forward(self, u: Tensor, angle_state=None, ssm_state=None, k_state=None, v_state=None):
        """u (B, L, d_model) -> (B, L, d_model); given states are filled from the sequence."""
        z, x, B, C, ADT, DT, trap, angles = self._project(u)
        ADT, DT, trap = (t.transpose(1, 2) for t in (ADT, DT, trap))  # (B, H, L), as the kernels
        keep = ssm_state is not None
        gate = None if self.is_outproj_norm else z
        if self.is_mimo:
            y = ops.mamba3_mimo(
                Q=C, K=B, V=x, ADT=ADT, DT=DT, Trap=trap, Q_bias=self.C_bias, K_bias=self.B_bias,
                MIMO_V=self.mimo_x, MIMO_Z=self.mimo_z,
                MIMO_Out=None if self.is_outproj_norm else self.mimo_o, Angles=angles, D=self.D,
                Z=gate, chunk_size=self.chunk_size, rotary_dim_divisor=self.rotary_dim_divisor,
                dtype=x.dtype, return_state=keep, kernels=self.kernels,
            )  # fmt: skip
        else:
            y = ops.mamba3_siso(
                Q=C.squeeze(2), K=B.squeeze(2), V=x, ADT=ADT, DT=DT, Trap=trap,
                Q_bias=self.C_bias.squeeze(1), K_bias=self.B_bias.squeeze(1), Angles=angles,
                D=self.D, Z=gate, chunk_size=self.chunk_size, return_final_states=keep,
                kernels=self.kernels,
            )  # fmt: skip
        if keep:
            y, angle, ssm, k, v = y
            k = k if self.is_mimo else k.unsqueeze(1)  # SISO's k state has no rank dim
            for state, last in zip(
                (angle_state, ssm_state, k_state, v_state), (angle, ssm, k, v), strict=True
            ):
                state.copy_(last)
        return self.out_proj(self._output(y, z).to(x.dtype))

    def step(self, u: Tensor, angle_state, ssm_state, k_state, v_state):
        """One token: u (B, 1, d_model) -> (B, 1, d_model); the four states advance in place.

        Plain PyTorch on every device, with no host syncs, so a CUDA graph can capture it.
        Returns the output and the states, as mamba-ssm's step does.
        """
        z, x, B, C, ADT, DT, trap, angles = (t[:, 0] for t in self._project(u))
        mimo = (self.mimo_x, self.mimo_z, self.mimo_o) if self.is_mimo else (None,) * 3
        y, new = scan.mamba3_state_step(
            angle_state, ssm_state, k_state, v_state, C, B, x, ADT, DT, trap, angles,
            self.C_bias, self.B_bias, self.D, z=None if self.is_outproj_norm else z,
            mimo_v=mimo[0], mimo_z=mimo[1], mimo_o=None if self.is_outproj_norm else mimo[2],
            rotate_pairwise=not self.is_mimo,
        )  # fmt: skip
        for state, value in zip((angle_state, ssm_state, k_state, v_state), new, strict=True):
            state.copy_(value)
        if not self.is_mimo:
            y = y.squeeze(1)  # (B, H, P): SISO has one rank
        out = self.out_proj(self._output(y, z).to(x.dtype)).unsqueeze(1)
        return out, angle_state, ssm_state, k_state, v_state

    def allocate_inference_cache(self, batch_size, max_seqlen, dtype=None, **kwargs):
        """The decoding state of `batch_size` sequences, in mamba-ssm's layout: the angles
        (B, H, A) and the SSM state (B, H, P, N) in float32 (float64 for a float64 layer), the
        previous token's k (B, R, H, N) and x (B, H, P) in the layer's dtype."""
        weight = self.in_proj.weight
        dtype = dtype or weight.dtype
        exact = torch.float64 if weight.dtype == torch.float64 else torch.float32
        b, h, device = batch_size, self.nheads, weight.device
        return (
            torch.zeros(b, h, self.num_rope_angles, device=device, dtype=exact),
            torch.zeros(b, h, self.headdim, self.d_state, device=device, dtype=exact),
            torch.zeros(b, self.mimo_rank, h, self.d_state, device=device, dtype=dtype),
            torch.zeros(b, h, self.headdim, device=device, dtype=dtype),
        )
