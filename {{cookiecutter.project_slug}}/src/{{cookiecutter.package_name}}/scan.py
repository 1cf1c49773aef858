"""State-space scans in plain PyTorch: the math the fused CUDA/Triton kernels compute.

Three recurrences, each in two forms:

* Mamba1's selective scan, a diagonal state per channel and state dimension::

      h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * x_t        h: (B, D, N)
      y_t = <C_t, h_t> + D * x_t

* Mamba2's SSD, a scalar decay per head::

      h_t = exp(dt_t * A_h) * h_{t-1} + dt_t * x_t B_t^T       h: (B, H, P, N)
      y_t = h_t C_t + D_h * x_t

* Mamba-3, SSD with a trapezoidal rule (each input weighted at two steps) and B/C rotated by
  a data-dependent angle; q = C and k = B after their norms, ADT = A * dt with A < 0::

      theta_t = theta_{t-1} + pi * tanh(angles_t) * dt_t   (mod 2 pi)    theta: (B, H, N_rope)
      k_t = Rot(theta_t) (B_t + B_bias),  q_t = Rot(theta_t) (C_t + C_bias)
      alpha_t = exp(ADT_t),  lam_t = sigmoid(trap_t)
      h_t = alpha_t h_{t-1} + alpha_t (1 - lam_t) dt_t x_{t-1} k_{t-1}^T
                            + lam_t dt_t x_t k_t^T                     h: (B, H, P, N)
      y_t = (h_t q_t + D_h x_t) * silu(z_t)

  MIMO has R ranks: x_t k_t^T becomes sum_r (psi_r * x_t) k_{t,r}^T, each rank reads
  y_{t,r} = h_t q_{t,r} + D_h psi_r * x_t, and y_t = sum_r phi_r * y_{t,r} * silu(zeta_r * z_t)
  (psi, zeta, phi: mimo_x, mimo_z, mimo_o). Rot turns dims (2i, 2i+1) in SISO, (i, i + N/2)
  in MIMO, as mamba-ssm's kernels do.

`selective_scan`, `ssd_scan`, `mamba3_scan` and `mamba3_mimo_scan` are the training forms:
chunked, with no Python loop over time steps. `selective_scan_sequential`,
`ssd_scan_sequential` and `mamba3_scan_sequential` step through time one token at a time with
the same update that recurrent decoding uses (`selective_state_step`, `ssd_state_step`,
`mamba3_state_step`); they are the oracles the tests compare against.

All scans take `dt` after the softplus and bias (positive step sizes), compute in float32 (or
float64 when given float64) and return the input's dtype, like the fused kernels.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------------
# Mamba1: selective scan
# --------------------------------------------------------------------------------------------


def selective_state_step(
    state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None
) -> tuple[Tensor, Tensor]:
    """One token of the selective scan.

    state (B, D, N); x, dt (B, D); A (D, N); B, C (B, N); D (D,).
    Returns y (B, D) and the new state (B, D, N).
    """
    decay = torch.exp(dt.unsqueeze(-1) * A)  # (B, D, N)
    state = decay * state + (dt * x).unsqueeze(-1) * B.unsqueeze(1)
    y = (state * C.unsqueeze(1)).sum(-1)  # (B, D)
    if D is not None:
        y = y + D * x
    return y, state


def selective_scan_sequential(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    initial_state: Tensor | None = None,
    return_final_state: bool = False,
):
    """The oracle: `selective_state_step` once per token. Shapes as in `selective_scan`."""
    dtype, cdt = x.dtype, _compute_dtype(x)
    x, dt, A, B, C = (t.to(cdt) for t in (x, dt, A, B, C))
    D = D.to(cdt) if D is not None else None
    batch, length, dim = x.shape
    state = x.new_zeros(batch, dim, A.shape[-1]) if initial_state is None else initial_state.to(cdt)
    ys = []
    for t in range(length):
        y, state = selective_state_step(state, x[:, t], dt[:, t], A, B[:, t], C[:, t], D)
        ys.append(y)
    y = torch.stack(ys, dim=1)  # (B, L, D)
    if z is not None:
        y = y * F.silu(z.to(cdt))
    y = y.to(dtype)
    return (y, state) if return_final_state else y


# Inside a chunk the scan is solved in closed form in float64 (see `selective_scan`). Capping
# each step's log-decay at -40 keeps exp() of the chunk's cumulative decay finite for chunks
# of up to 16 steps; a decay of e^-40 (4e-18) per step is already zero at float32 precision.
_MAX_CHUNK = 16
_MIN_LOG_DECAY = -40.0


def selective_scan(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    initial_state: Tensor | None = None,
    return_final_state: bool = False,
    chunk_size: int = _MAX_CHUNK,
):
    """Mamba1's selective scan, chunked.

    x, dt, z: (B, L, D); A: (D, N); B, C: (B, L, N); D: (D,); initial_state: (B, D, N).
    Returns y (B, L, D), and the final state (B, D, N) if asked.

    Within a chunk of T <= 16 steps, with S_t the cumulative log-decay from the chunk start,
    the recurrence has the closed form

        h_t = exp(S_t) * (h_in + sum_{s <= t} exp(-S_s) * dt_s B_s x_s)

    i.e. two cumulative sums, evaluated for every step at once in float64 (whose range holds
    exp(-S) over a chunk). Only the (B, D, N) state travels from chunk to chunk, so the
    working set stays small and the loop runs L / T times, not L times.
    """
    if not 1 <= chunk_size <= _MAX_CHUNK:
        raise ValueError(f"selective_scan: chunk_size={chunk_size} must be in [1, {_MAX_CHUNK}]")
    dtype, cdt = x.dtype, _compute_dtype(x)
    x, dt, A, B, C = (t.to(cdt) for t in (x, dt, A, B, C))
    batch, length, dim = x.shape
    state = x.new_zeros(batch, dim, A.shape[-1]) if initial_state is None else initial_state.to(cdt)
    state, A64 = state.double(), A.double()
    ys = []
    for start in range(0, length, chunk_size):
        chunk = slice(start, start + chunk_size)
        dt_c = dt[:, chunk].double()  # (B, T, D)
        log_decay = (dt_c.unsqueeze(-1) * A64).clamp(min=_MIN_LOG_DECAY)  # (B, T, D, N)
        cum = torch.cumsum(log_decay, dim=1)
        inp = (dt_c * x[:, chunk]).unsqueeze(-1) * B[:, chunk].unsqueeze(2)  # (B, T, D, N)
        states = torch.exp(cum) * (torch.cumsum(torch.exp(-cum) * inp, dim=1) + state[:, None])
        ys.append(torch.einsum("btdn,btn->btd", states.to(cdt), C[:, chunk]))
        state = states[:, -1]
    state = state.to(cdt)
    y = torch.cat(ys, dim=1)  # (B, L, D)
    if D is not None:
        y = y + x * D.to(cdt)
    if z is not None:
        y = y * F.silu(z.to(cdt))
    y = y.to(dtype)
    return (y, state) if return_final_state else y


# --------------------------------------------------------------------------------------------
# Mamba2: state-space duality (SSD)
# --------------------------------------------------------------------------------------------


def _heads_from_groups(t: Tensor, nheads: int) -> Tensor:
    """(..., G, N) -> (..., H, N): each group's B/C is shared by H // G consecutive heads."""
    return t.repeat_interleave(nheads // t.shape[-2], dim=-2)


def ssd_state_step(
    state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None
) -> tuple[Tensor, Tensor]:
    """One token of SSD.

    state (B, H, P, N); x (B, H, P); dt (B, H); A (H,); B, C (B, G, N); D (H,).
    Returns y (B, H, P) and the new state.
    """
    nheads = x.shape[1]
    B, C = _heads_from_groups(B, nheads), _heads_from_groups(C, nheads)  # (B, H, N)
    decay = torch.exp(dt * A)[..., None, None]  # (B, H, 1, 1)
    state = decay * state + (dt[..., None] * x).unsqueeze(-1) * B.unsqueeze(2)
    y = torch.einsum("bhpn,bhn->bhp", state, C)
    if D is not None:
        y = y + D[:, None] * x
    return y, state


def ssd_scan_sequential(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    initial_state: Tensor | None = None,
    return_final_state: bool = False,
):
    """The oracle: `ssd_state_step` once per token. Shapes as in `ssd_scan`."""
    dtype, cdt = x.dtype, _compute_dtype(x)
    x, dt, A, B, C = (t.to(cdt) for t in (x, dt, A, B, C))
    D = D.to(cdt) if D is not None else None
    batch, length, nheads, headdim = x.shape
    shape = (batch, nheads, headdim, B.shape[-1])
    state = x.new_zeros(shape) if initial_state is None else initial_state.to(cdt)
    ys = []
    for t in range(length):
        y, state = ssd_state_step(state, x[:, t], dt[:, t], A, B[:, t], C[:, t], D)
        ys.append(y)
    y = torch.stack(ys, dim=1).to(dtype)  # (B, L, H, P)
    return (y, state) if return_final_state else y


def _segment_sums(cum: Tensor) -> Tensor:
    """(..., T) cumulative log-decays -> (..., T, T) with [t, s] = cum_t - cum_s for s <= t.

    Entries above the diagonal are -inf, so exp() of the result is the causal decay matrix.
    """
    length = cum.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=cum.device).tril()
    return (cum.unsqueeze(-1) - cum.unsqueeze(-2)).masked_fill(~causal, float("-inf"))


def ssd_scan(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    initial_state: Tensor | None = None,
    return_final_state: bool = False,
    chunk_size: int = 64,
):
    """Mamba2's SSD in its chunked form.

    x: (B, L, H, P); dt: (B, L, H); A: (H,); B, C: (B, L, G, N); D: (H,);
    initial_state: (B, H, P, N). Returns y (B, L, H, P), and the final state if asked.

    Inside a chunk the output is a masked (attention-like) matrix product; across chunks only
    the (H, P, N) states travel, through a chunk-level decay matrix. Lengths that are not a
    multiple of `chunk_size` are padded with dt = 0 (no decay, no input), which changes nothing.
    """
    dtype, cdt = x.dtype, _compute_dtype(x)
    x, dt, A, B, C = (t.to(cdt) for t in (x, dt, A, B, C))
    batch, length, nheads, headdim = x.shape
    skip = x * D.to(cdt)[:, None] if D is not None else None  # (B, L, H, P)
    pad = (-length) % chunk_size
    if pad:
        x, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, B, C))
        dt = F.pad(dt, (0, 0, 0, pad))
    nchunks = (length + pad) // chunk_size

    def chunked(t: Tensor) -> Tensor:  # (B, L, ...) -> (B, C, T, ...)
        return t.reshape(batch, nchunks, chunk_size, *t.shape[2:])

    x, dt = chunked(x), chunked(dt)
    B, C = chunked(_heads_from_groups(B, nheads)), chunked(_heads_from_groups(C, nheads))
    log_decay = (dt * A).permute(0, 3, 1, 2)  # (B, H, C, T)
    cum = torch.cumsum(log_decay, dim=-1)  # (B, H, C, T)
    xdt = x * dt.unsqueeze(-1)  # (B, C, T, H, P)

    # 1. within each chunk: y_t = sum_{s <= t} (C_t . B_s) exp(decay over (s, t]) dt_s x_s
    decay_matrix = torch.exp(_segment_sums(cum))  # (B, H, C, T, T)
    scores = torch.einsum("bcthn,bcshn->bhcts", C, B) * decay_matrix
    y = torch.einsum("bhcts,bcshp->bcthp", scores, xdt)

    # 2. the state each chunk produces on its own, decayed to the chunk's end
    to_end = torch.exp(cum[..., -1:] - cum)  # (B, H, C, T)
    chunk_states = torch.einsum("bcshn,bhcs,bcshp->bchpn", B, to_end, xdt)

    # 3. carry states across chunks: state entering chunk c, from all chunks before it
    if initial_state is None:
        initial_state = x.new_zeros(batch, nheads, headdim, B.shape[-1])
    chunk_states = torch.cat([initial_state.to(cdt).unsqueeze(1), chunk_states], dim=1)
    chunk_decay = torch.exp(
        _segment_sums(torch.cumsum(F.pad(cum[..., -1], (1, 0)), -1))
    )  # (B, H, C+1, C+1)
    states = torch.einsum("bhzc,bchpn->bzhpn", chunk_decay, chunk_states)
    entering, final_state = states[:, :-1], states[:, -1]

    # 4. what the entering state contributes at every position of the chunk
    from_start = torch.exp(cum)  # (B, H, C, T)
    y = y + torch.einsum("bcthn,bchpn,bhct->bcthp", C, entering, from_start)

    y = y.reshape(batch, nchunks * chunk_size, nheads, headdim)[:, :length]
    if skip is not None:
        y = y + skip
    y = y.to(dtype)
    return (y, final_state) if return_final_state else y


# --------------------------------------------------------------------------------------------
# Mamba-3: trapezoidal SSD with data-dependent rotations, SISO and MIMO
# --------------------------------------------------------------------------------------------
#
# Read from mamba-ssm 2.3.2.post1's kernels: ops/triton/mamba3/angle_dt.py (the angles),
# mamba3_siso_fwd.py (SISO), ops/tilelang/mamba3/mamba3_mimo_fwd.py (MIMO),
# mamba3_mimo_rotary_step.py and ops/cute/mamba3/mamba3_step_fn.py (one decoding step).
# Shapes: B batch, L length, H heads, P headdim, G groups of B/C (GQA, H % G == 0), N d_state,
# R MIMO rank (1 for SISO), A rotated pairs (num_rope_angles, at most N / 2).


def _rotate(x: Tensor, cos: Tensor, sin: Tensor, pairwise: bool) -> Tensor:
    """Turn pairs of x's last dim (N) by the angles whose cos/sin (..., A) broadcast against x.

    pairwise: dims (2i, 2i + 1) form pair i, as in the SISO kernel; else (i, i + N/2), as in
    the MIMO kernel. Dims in no pair (the pairs past A) pass unchanged.
    """
    rope = cos.shape[-1]
    if pairwise:
        x0, x1 = x[..., 0 : 2 * rope : 2], x[..., 1 : 2 * rope : 2]
        turned = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)
        return torch.cat((turned, x[..., 2 * rope :]), dim=-1)
    half = x.shape[-1] // 2
    x0, x1 = x[..., :rope], x[..., half : half + rope]
    return torch.cat(
        (x0 * cos - x1 * sin, x[..., rope:half], x0 * sin + x1 * cos, x[..., half + rope :]), dim=-1
    )


def _mamba3_angle_steps(angles: Tensor, dt: Tensor) -> Tensor:
    """How far each token turns: pi * tanh(angles) * dt, angles (..., A) and dt (...)."""
    return torch.tanh(angles) * math.pi * dt.unsqueeze(-1)


def _maybe(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return None if t is None else t.to(dtype)


def _mamba3_output(y: Tensor, z: Tensor | None, mimo_z: Tensor | None, mimo_o: Tensor | None):
    """Per-rank outputs y (..., R, H, P) -> gated by silu(zeta_r * z), then summed over ranks
    with weights phi_r when mimo_o is given (else still per rank). z (..., H, P); mimo_z and
    mimo_o (H, R, P), None for SISO (z gates directly)."""
    if z is not None:
        z = z.unsqueeze(-3)  # (..., 1, H, P)
        if mimo_z is not None:
            z = z * mimo_z.transpose(0, 1)  # (..., R, H, P)
        y = y * F.silu(z)
    if mimo_o is not None:
        y = (y * mimo_o.transpose(0, 1)).sum(-3)  # (..., H, P)
    return y


def mamba3_state_step(
    angle_state: Tensor,
    ssm_state: Tensor,
    k_state: Tensor,
    v_state: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    adt: Tensor,
    dt: Tensor,
    trap: Tensor,
    angles: Tensor,
    q_bias: Tensor,
    k_bias: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    mimo_v: Tensor | None = None,
    mimo_z: Tensor | None = None,
    mimo_o: Tensor | None = None,
    rotate_pairwise: bool = True,
):
    """One token of Mamba-3 on the decoding state (pure: returns new states, changes none).

    States, in mamba-ssm's `allocate_inference_cache` layout: angle_state (B, H, A);
    ssm_state (B, H, P, N); k_state (B, R, H, N), the previous token's k after bias and
    rotation; v_state (B, H, P), the previous token's x.
    The token: q, k (B, R, G, N) (C and B after their norms); v, z (B, H, P); adt, dt, trap
    (B, H), trap before its sigmoid; angles (B, H, A) before the tanh; q_bias, k_bias (H, R, N);
    D (H,); mimo_v, mimo_z, mimo_o (H, R, P), all None for SISO. rotate_pairwise: True for
    SISO's pairs (2i, 2i + 1), False for MIMO's (i, i + N/2).

    Returns y, (B, H, P) or per rank (B, R, H, P) when mimo_o is None, and the new states
    (angle, ssm, k, v) in the compute dtype; v is this token's x, as given. The angle is kept
    in [0, 2 pi) like the chunked kernels keep theirs (mamba-ssm's own step lets it grow).
    """
    cdt = _compute_dtype(v)
    nheads = v.shape[1]
    q, k, adt, dt, trap, angles = (t.to(cdt) for t in (q, k, adt, dt, trap, angles))
    x, x_prev, k_prev = v.to(cdt), v_state.to(cdt), k_state.to(cdt)

    theta = torch.remainder(angle_state.to(cdt) + _mamba3_angle_steps(angles, dt), 2 * math.pi)
    cos, sin = theta.cos().unsqueeze(1), theta.sin().unsqueeze(1)  # (B, 1, H, A)
    q = _heads_from_groups(q, nheads) + q_bias.to(cdt).transpose(0, 1)  # (B, R, H, N)
    k = _heads_from_groups(k, nheads) + k_bias.to(cdt).transpose(0, 1)
    q, k = _rotate(q, cos, sin, rotate_pairwise), _rotate(k, cos, sin, rotate_pairwise)

    psi = mimo_v.to(cdt).transpose(0, 1) if mimo_v is not None else 1.0  # (R, H, P)
    xr, xr_prev = x.unsqueeze(1) * psi, x_prev.unsqueeze(1) * psi  # (B, R, H, P)
    alpha = torch.exp(adt)  # (B, H)
    lam = torch.sigmoid(trap)
    gamma = (lam * dt)[:, None, :, None]  # this token's weight
    beta = ((1 - lam) * dt * alpha)[:, None, :, None]  # the previous token's, decayed once
    ssm = (
        alpha[..., None, None] * ssm_state.to(cdt)
        + torch.einsum("brhp,brhn->bhpn", gamma * xr, k)
        + torch.einsum("brhp,brhn->bhpn", beta * xr_prev, k_prev)
    )  # (B, H, P, N)
    y = torch.einsum("bhpn,brhn->brhp", ssm, q)  # (B, R, H, P)
    if D is not None:
        y = y + D.to(cdt)[:, None] * xr
    y = _mamba3_output(y, _maybe(z, cdt), _maybe(mimo_z, cdt), _maybe(mimo_o, cdt))
    return y, (theta, ssm, k, v)


def _check_mamba3(name: str, V: Tensor, cu_seqlens) -> None:
    if cu_seqlens is not None:
        raise ValueError(
            f"{name}: cu_seqlens (packed variable-length sequences) is not supported by the "
            "plain-PyTorch scan; pass a padded (B, L, ...) batch with cu_seqlens=None"
        )
    if V.shape[1] == 0:
        raise ValueError(f"{name}: the sequence is empty (V has shape {tuple(V.shape)})")


def mamba3_scan_sequential(
    Q: Tensor,
    K: Tensor,
    V: Tensor,
    ADT: Tensor,
    DT: Tensor,
    Trap: Tensor,
    Q_bias: Tensor,
    K_bias: Tensor,
    Angles: Tensor,
    D: Tensor | None = None,
    Z: Tensor | None = None,
    Input_States=None,
    return_final_states: bool = False,
    MIMO_V: Tensor | None = None,
    MIMO_Z: Tensor | None = None,
    MIMO_Out: Tensor | None = None,
):
    """The oracle: `mamba3_state_step` once per token.

    Q and K's rank picks the form. (B, L, G, N): SISO, arguments and results as `mamba3_scan`.
    (B, L, R, G, N): MIMO, arguments as `mamba3_mimo_scan` (Q_bias (H, R, N), MIMO_* (H, R, P))
    and, unlike its kernel, Input_States with k (B, R, H, N); the output is V's dtype.
    """
    _check_mamba3("mamba3_scan_sequential", V, None)
    siso = Q.dim() == 4
    if siso:
        Q, K, Q_bias, K_bias = Q.unsqueeze(2), K.unsqueeze(2), Q_bias[:, None], K_bias[:, None]
    batch, length, rank, _, nstate = Q.shape
    nheads, headdim = V.shape[-2:]
    cdt = _compute_dtype(V)
    if Input_States is None:
        Input_States = (
            V.new_zeros(batch, nheads, Angles.shape[-1], dtype=cdt),
            V.new_zeros(batch, nheads, headdim, nstate, dtype=cdt),
            V.new_zeros(batch, rank, nheads, nstate, dtype=cdt),
            V.new_zeros(batch, nheads, headdim, dtype=cdt),
        )
    elif siso:
        angle, ssm, k, v = Input_States
        Input_States = (angle, ssm, k.unsqueeze(1), v)
    states, ys = Input_States, []
    for t in range(length):
        y, states = mamba3_state_step(
            *states, Q[:, t], K[:, t], V[:, t], ADT[..., t], DT[..., t], Trap[..., t],
            Angles[:, t], Q_bias, K_bias, D, Z[:, t] if Z is not None else None,
            MIMO_V, MIMO_Z, MIMO_Out, rotate_pairwise=siso,
        )  # fmt: skip
        ys.append(y)
    y = torch.stack(ys, dim=1)  # (B, L, H, P) or (B, L, R, H, P)
    if siso:
        y = y.squeeze(2)
        angle, ssm, k, v = states
        states = (angle, ssm, k.squeeze(1), v)
    y = y.to(V.dtype)
    return (y, *states) if return_final_states else y


def _mamba3_chunked(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    adt: Tensor,
    dt: Tensor,
    trap: Tensor,
    q_bias: Tensor,
    k_bias: Tensor,
    angles: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    mimo_v: Tensor | None,
    mimo_z: Tensor | None,
    mimo_o: Tensor | None,
    states,
    chunk_size: int,
    rotate_pairwise: bool,
):
    """Mamba-3 over chunks of `chunk_size` tokens, for SISO (R = 1) and MIMO alike.

    q, k (B, L, R, G, N); v, z (B, L, H, P); adt, dt, trap (B, H, L); q_bias, k_bias (H, R, N);
    angles (B, L, H, A); mimo_* (H, R, P) or None; states (angle, ssm, k, v) as in
    `mamba3_state_step`, or None. Everything in one compute dtype.
    Returns y, (B, L, H, P) or per rank (B, L, R, H, P) when mimo_o is None, and the final
    states (angle, ssm, k, v).

    Unrolled, h_t = sum_{s <= t} exp(ADT_{s+1} + ... + ADT_t) * scale_s x_s k_s^T, where
    scale_s = lam_s dt_s + (1 - lam_{s+1}) dt_{s+1} gathers both weights of token s (the
    second, from token s + 1's trapezoid, is 0 for the last token). So inside a chunk
    y_t = exp(cum_t) h_in q_t + sum_{s < t} exp(cum_t - cum_s) (q_t . scale_s k_s) x_s
    + lam_t dt_t (q_t . k_t) x_t, and only the (H, P, N) state crosses chunk borders,
    as in the kernels.
    """
    batch, length, rank, _, nstate = q.shape
    nheads, headdim = v.shape[-2:]
    adt, dt, trap = (t.transpose(1, 2) for t in (adt, dt, trap))  # (B, L, H)
    lam = torch.sigmoid(trap)
    gamma = lam * dt  # token t's weight in h_t
    beta = (1 - lam) * dt  # token t-1's weight in h_t, before the decay alpha_t
    scale = gamma + F.pad(beta[:, 1:], (0, 0, 0, 1))  # (B, L, H)

    q = _heads_from_groups(q, nheads) + q_bias.transpose(0, 1)  # (B, L, R, H, N)
    k = _heads_from_groups(k, nheads) + k_bias.transpose(0, 1)
    psi = mimo_v.transpose(0, 1) if mimo_v is not None else q.new_ones(1, nheads, headdim)
    xr = v.unsqueeze(2) * psi  # (B, L, R, H, P)

    if states is None:
        theta = v.new_zeros(batch, nheads, angles.shape[-1])
        h = v.new_zeros(batch, nheads, headdim, nstate)
    else:
        theta, h, k_prev, v_prev = states
        # the token before the sequence still owes its trapezoid share to token 0
        h = h + torch.einsum(
            "brhp,brhn->bhpn", v_prev.unsqueeze(1) * psi * beta[:, 0, None, :, None], k_prev
        )  # (B, H, P, N)

    ys = []
    strict = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=v.device).tril(-1)
    for start in range(0, length, chunk_size):
        c = slice(start, start + chunk_size)
        size = min(chunk_size, length - start)
        # the angles run on from the previous chunk, kept in [0, 2 pi) as angle_dt.py keeps them
        turns = _mamba3_angle_steps(angles[:, c], dt[:, c])  # (B, T, H, A)
        cum_theta = torch.remainder(theta.unsqueeze(1) + turns.cumsum(1), 2 * math.pi)
        theta = torch.remainder(theta + turns.sum(1), 2 * math.pi)
        cos, sin = cum_theta.cos().unsqueeze(2), cum_theta.sin().unsqueeze(2)  # (B, T, 1, H, A)
        q_rot = _rotate(q[:, c], cos, sin, rotate_pairwise)  # (B, T, R, H, N)
        k_rot = _rotate(k[:, c], cos, sin, rotate_pairwise)
        k_scaled = k_rot * scale[:, c, None, :, None]
        x_c = xr[:, c]  # (B, T, R, H, P)

        cum = torch.cumsum(adt[:, c].transpose(1, 2), dim=-1)  # (B, H, T)
        decay = torch.exp(_segment_sums(cum)) * strict[:size, :size]  # (B, H, T, T), s < t

        # 1. the state entering the chunk, decayed to each position
        y = torch.einsum("btrhn,bhpn,bht->btrhp", q_rot, h, torch.exp(cum))
        # 2. earlier tokens of the chunk
        scores = torch.einsum("btrhn,bsihn->bhtrsi", q_rot, k_scaled)
        scores = scores * decay[:, :, :, None, :, None]  # (B, H, T, R, T, R)
        y = y + torch.einsum("bhtrsi,bsihp->btrhp", scores, x_c)
        # 3. the token itself, with its own weight only; the rotation cancels in q_t . k_t
        same = torch.einsum("btrhn,btihn->btrih", q[:, c], k[:, c])  # (B, T, R, R, H)
        same = same * gamma[:, c, None, None, :]
        y = y + torch.einsum("btrih,btihp->btrhp", same, x_c)
        ys.append(y)

        to_end = torch.exp(cum[..., -1:] - cum)  # (B, H, T)
        h = torch.exp(cum[..., -1])[..., None, None] * h + torch.einsum(
            "bsihp,bhs,bsihn->bhpn", x_c, to_end, k_scaled
        )

    y = torch.cat(ys, dim=1)  # (B, L, R, H, P)
    if D is not None:
        y = y + D[:, None] * xr
    y = _mamba3_output(y, z, mimo_z, mimo_o)
    return y, (theta, h, k_rot[:, -1], v[:, -1])


def mamba3_scan(
    Q: Tensor,
    K: Tensor,
    V: Tensor,
    ADT: Tensor,
    DT: Tensor,
    Trap: Tensor,
    Q_bias: Tensor,
    K_bias: Tensor,
    Angles: Tensor,
    D: Tensor | None = None,
    Z: Tensor | None = None,
    Input_States=None,
    chunk_size: int = 64,
    return_final_states: bool = False,
    cu_seqlens: Tensor | None = None,
):
    """Mamba-3 (SISO), chunked, with mamba-ssm's `mamba3_siso_combined` arguments and results.

    Q, K (B, L, G, N): C and B after their norms; V, Z (B, L, H, P); ADT = A * dt, DT and Trap
    (B, H, L), Trap before its sigmoid; Q_bias, K_bias (H, N); Angles (B, L, H, A), A <= N/2,
    before the tanh; D (H,). Input_States: (angle (B, H, A), ssm (B, H, P, N), k (B, H, N)
    rotated with its bias, v (B, H, P)) or None.
    Returns out (B, L, H, P) in V's dtype, and with return_final_states also the final
    (angle, ssm, k, v) states in those layouts.
    """
    _check_mamba3("mamba3_scan", V, cu_seqlens)
    dtype, cdt = V.dtype, _compute_dtype(V)
    if Input_States is not None:
        angle, ssm, k, v = (t.to(cdt) for t in Input_States)
        Input_States = (angle, ssm, k.unsqueeze(1), v)
    y, (angle, ssm, k, v) = _mamba3_chunked(
        Q.to(cdt).unsqueeze(2), K.to(cdt).unsqueeze(2), V.to(cdt), ADT.to(cdt), DT.to(cdt),
        Trap.to(cdt), Q_bias.to(cdt)[:, None], K_bias.to(cdt)[:, None], Angles.to(cdt),
        _maybe(D, cdt), _maybe(Z, cdt), None, None, None, Input_States, chunk_size,
        rotate_pairwise=True,
    )  # fmt: skip
    y = y.squeeze(2).to(dtype)  # (B, L, H, P)
    return (y, angle, ssm, k.squeeze(1), V[:, -1]) if return_final_states else y


def mamba3_mimo_scan(
    Q: Tensor,
    K: Tensor,
    V: Tensor,
    ADT: Tensor,
    DT: Tensor,
    Trap: Tensor,
    Q_bias: Tensor,
    K_bias: Tensor,
    MIMO_V: Tensor,
    MIMO_Z: Tensor | None,
    MIMO_Out: Tensor | None,
    Angles: Tensor,
    D: Tensor | None,
    Z: Tensor | None,
    chunk_size: int,
    rotary_dim_divisor: int,
    dtype: torch.dtype,
    return_state: bool = False,
    cu_seqlens: Tensor | None = None,
):
    """Mamba-3 MIMO, chunked, with mamba-ssm's `mamba3_mimo` arguments and results.

    Q, K (B, L, R, G, N); V, Z (B, L, H, P); ADT, DT, Trap (B, H, L), Trap before its sigmoid;
    Q_bias, K_bias (H, R, N); MIMO_V, MIMO_Z, MIMO_Out (H, R, P); Angles (B, L, H, N //
    rotary_dim_divisor), before the tanh; D (H,). It starts from zero states, like the kernel.
    Returns out in `dtype`: (B, L, H, P), or per rank (B, L, R, H, P) when MIMO_Out is None;
    with return_state also the final (angle (B, H, A), ssm (B, H, P, N), k (B, R, H, N), v).
    """
    _check_mamba3("mamba3_mimo_scan", V, cu_seqlens)
    nstate = Q.shape[-1]
    if rotary_dim_divisor not in (2, 4) or Angles.shape[-1] != nstate // rotary_dim_divisor:
        raise ValueError(
            f"mamba3_mimo_scan: Angles has {Angles.shape[-1]} angles per head with d_state "
            f"{nstate} and rotary_dim_divisor={rotary_dim_divisor}; the MIMO kernel needs "
            "d_state // rotary_dim_divisor angles, with rotary_dim_divisor 2 or 4"
        )
    cdt = _compute_dtype(V)
    y, (angle, ssm, k, v) = _mamba3_chunked(
        Q.to(cdt), K.to(cdt), V.to(cdt), ADT.to(cdt), DT.to(cdt), Trap.to(cdt),
        Q_bias.to(cdt), K_bias.to(cdt), Angles.to(cdt), _maybe(D, cdt), _maybe(Z, cdt),
        MIMO_V.to(cdt), _maybe(MIMO_Z, cdt), _maybe(MIMO_Out, cdt), None, chunk_size,
        rotate_pairwise=False,
    )  # fmt: skip
    y = y.to(dtype)
    return (y, angle, ssm, k.to(dtype), V[:, -1]) if return_state else y
