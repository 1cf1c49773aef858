"""The Triton body of `loss.scored_rows`: the same rule in one pass per row, on a CUDA device.

For each row of logits x (V columns) and its target t, one program walks the row once in
blocks, keeping in float32 the running maximum and sum of exp over the columns other than t,
the target's logit and the first column of the largest logit. It then writes

    loss = softplus(logsumexp(x without x_t) - x_t),  correct = (argmax x == t)

and, for training, walks the row a second time and overwrites the logits with the gradient of
the loss: (1 - p_t) * softmax of the other columns, and -(1 - p_t) at t. A row whose target is
the ignore index gets loss 0, correct 0 and a zero gradient. The plain-PyTorch body computes
the same numbers from several (rows, V) float32 copies of the logits; this one reads the
logits twice and writes the gradient once, in their own dtype (bf16 under autocast).

Importing this module needs triton (part of a CUDA install of torch); `loss.py` imports it only
on a CUDA device where triton is installed.
"""

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU install of torch: loss.py runs its plain-PyTorch body there
    triton = None

if triton is not None:

    @triton.jit
    def _scored_rows_kernel(
        X,  # (N, V) logits; overwritten with the gradient when WITH_GRAD
        T,  # (N,) targets
        LOSS,  # (N,) float32
        CORRECT,  # (N,) int32
        stride,
        V,
        ignore_index,
        WITH_GRAD: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        x_row = X + row * stride
        t = tl.load(T + row).to(tl.int32)
        keep = t != ignore_index
        t = tl.where(keep, t, 0)
        top = -float("inf")  # largest logit so far, and its first column
        top_at = 0
        m = -3.0e38  # running maximum of the other columns (finite: no inf - inf)
        s = 0.0  # sum of exp(x - m) over the other columns
        for start in range(0, V, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            x = tl.load(x_row + cols, mask=cols < V, other=-float("inf")).to(tl.float32)
            block_top = tl.max(x, 0)
            block_at = start + tl.argmax(x, 0, tie_break_left=True)
            top_at = tl.where(block_top > top, block_at, top_at)
            top = tl.maximum(top, block_top)
            others = tl.where(cols == t, -float("inf"), x)
            m_new = tl.maximum(m, tl.max(others, 0))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(others - m_new), 0)
            m = m_new
        x_t = tl.load(x_row + t).to(tl.float32)
        gap = m + tl.log(s) - x_t  # log of the other columns' mass over the target's
        e = tl.exp(-tl.abs(gap))  # softplus(gap) = max(gap, 0) + log1p(e), log1p by series
        log1p_e = tl.where(
            e < 1e-2, e * (1.0 - e * (0.5 - e * (1.0 / 3.0 - 0.25 * e))), tl.log(1.0 + e)
        )
        loss = tl.maximum(gap, 0.0) + log1p_e
        tl.store(LOSS + row, tl.where(keep, loss, 0.0))
        tl.store(CORRECT + row, (keep & (top_at == t)).to(tl.int32))
        if WITH_GRAD:
            miss = tl.where(keep, tl.sigmoid(gap), 0.0)  # 1 - p_t, exact however small
            lse = m + tl.log(s)
            for start in range(0, V, BLOCK):
                cols = start + tl.arange(0, BLOCK)
                x = tl.load(x_row + cols, mask=cols < V, other=0.0).to(tl.float32)
                grad = tl.where(cols == t, -miss, miss * tl.exp(x - lse))
                tl.store(x_row + cols, grad.to(X.dtype.element_ty), mask=cols < V)


def scored_rows(
    logits: Tensor, targets: Tensor, ignore_index: int, with_grad: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """`loss.scored_rows` on a CUDA device: per-row loss (float32), per-row hit (int32), and
    the gradient of the summed loss, written over `logits` (returned as that same tensor)."""
    logits = logits.contiguous()
    n, v = logits.shape
    loss = torch.empty(n, device=logits.device, dtype=torch.float32)
    correct = torch.empty(n, device=logits.device, dtype=torch.int32)
    block = min(triton.next_power_of_2(v), 4096)
    _scored_rows_kernel[(n,)](
        logits,
        targets.contiguous(),
        loss,
        correct,
        logits.stride(0),
        v,
        ignore_index,
        WITH_GRAD=with_grad,
        BLOCK=block,
        num_warps=8 if block >= 2048 else 4,
    )
    return loss, correct, logits if with_grad else None
