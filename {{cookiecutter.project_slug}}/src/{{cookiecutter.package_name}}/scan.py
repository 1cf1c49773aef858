"""State-space scans in plain PyTorch: the math the fused CUDA/Triton kernels compute.

Two recurrences, each in two forms:

* Mamba1's selective scan, a diagonal state per channel and state dimension::

      h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * x_t        h: (B, D, N)
      y_t = <C_t, h_t> + D * x_t

* Mamba2's SSD, a scalar decay per head::

      h_t = exp(dt_t * A_h) * h_{t-1} + dt_t * x_t B_t^T       h: (B, H, P, N)
      y_t = h_t C_t + D_h * x_t

`selective_scan` and `ssd_scan` are the training forms: chunked, with no Python loop over time
steps. `selective_scan_sequential` and `ssd_scan_sequential` step through time one token at a
time with the same update that recurrent decoding uses (`selective_state_step`,
`ssd_state_step`); they are the oracles the tests compare against.

All scans take `dt` after the softplus and bias (positive step sizes), compute in float32 (or
float64 when given float64) and return the input's dtype, like the fused kernels.
"""

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
