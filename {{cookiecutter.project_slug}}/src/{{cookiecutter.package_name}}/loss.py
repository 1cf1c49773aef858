"""The loss: one rule for training and validation, with its gradient written by hand.

Cross-entropy at each scored position, computed as softplus(logsumexp of the other logits -
the target's logit). That is the value of `F.cross_entropy`, which takes log(1 + mass of the
other classes) in the logits' dtype: in float32 that reads exactly 0 once the other classes'
mass is below float32's epsilon, at a margin of about 17 logits over the runner-up, and a
validation loss of 0.0 ties every confident checkpoint, so a `run.monitor` on it cannot rank
them. This form keeps the loss down to margins of about 100 logits, and its gradient, 1 - p_t
at the target, stays exact there too.

    scored_rows           the rule for (N, V) logits: per-row loss, hit, and the gradient
    cross_entropy         its mean over the scored positions of logits already in memory
{%- if cookiecutter.task == 'language_model' %}
    linear_cross_entropy  the same with the head projection inside, chunk by chunk of tokens
{%- endif %}

`scored_rows` has two bodies, like the layers' operations in `ops.py`: a Triton kernel
(`loss_kernel.py`) on a CUDA device, plain PyTorch elsewhere (and for float64, which the
kernel would round to float32); a GPU test checks that they agree.
{%- if cookiecutter.task == 'language_model' %}

For a 50k vocabulary, B=8 and L=2048, float32 logits alone take 3.3 GB and the plain loss
peaks at 9.4 GiB above its inputs. `linear_cross_entropy` computes the head and the loss 4096
tokens at a time and produces the gradients of the hidden states and of the head weight in the
same pass, so only one chunk of logits ever exists (the template's GPU harness,
`harness/gpu_check.py --sections loss`, measures it against plain float32 logits).
{%- endif %}
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from .ops import up, use_kernel


def scored_rows(
    logits: Tensor, targets: Tensor, ignore_index: int, with_grad: bool, kernels: bool = True
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The loss of each row of `logits` (N, V) against `targets` (N,), whether its largest
    logit is the target, and, `with_grad`, the gradient of the rows' summed loss with respect
    to the logits, in their dtype. A row whose target is `ignore_index` gets loss 0, no hit and
    a zero gradient. The gradient may be written over `logits` (the kernel does: one buffer)."""
    if logits.dtype != torch.float64 and use_kernel(kernels, logits, "triton"):
        from . import loss_kernel

        return loss_kernel.scored_rows(logits, targets, ignore_index, with_grad)
    x = up(logits)  # float32, or float64 in precision checks
    index = targets.clamp(min=0)[:, None]  # an ignored row is computed, then zeroed
    others = x.scatter(1, index, float("-inf"))
    lse = others.logsumexp(1)
    gap = lse - x.gather(1, index).squeeze(1)  # log(mass of the others / the target's)
    keep = targets != ignore_index
    loss = torch.where(keep, F.softplus(gap), 0.0)
    hit = keep & (x.argmax(1) == targets)
    if not with_grad:
        return loss, hit, None
    miss = torch.where(keep, torch.sigmoid(gap), 0.0)[:, None]  # 1 - p_t
    grad = (others - lse[:, None]).exp_().mul_(miss).scatter_(1, index, -miss)
    return loss, hit, grad.to(logits.dtype)


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, ignore: int, chunk: int, kernels: bool):
        with_grad = ctx.needs_input_grad[0]
        n_scored = (targets != ignore).sum().clamp(min=1)
        total = logits.new_zeros((), dtype=up(logits).dtype)
        correct = logits.new_zeros((), dtype=torch.long)
        grads = []
        for start in range(0, logits.shape[0], chunk):
            rows = logits[start : start + chunk]
            # the kernel writes the gradient over its input: the caller's logits stay as given
            rows = rows.clone() if with_grad else rows
            t = targets[start : start + chunk]
            loss, hit, grad = scored_rows(rows, t, ignore, with_grad, kernels)
            total += loss.sum()
            correct += hit.sum()
            grads.append(grad)
        if with_grad:
            ctx.save_for_backward(torch.cat(grads), n_scored)
        ctx.mark_non_differentiable(correct)
        return total / n_scored, correct

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_correct):
        grad, n_scored = ctx.saved_tensors
        return grad * (grad_loss / n_scored).to(grad.dtype), None, None, None, None


def cross_entropy(
    logits: Tensor,
    targets: Tensor,
    ignore_index: int = -100,
    chunk_size: int = 4096,
    kernels: bool = True,
) -> tuple[Tensor, Tensor]:
    """The mean loss over the positions whose target is not `ignore_index`, and how many of
    them the argmax predicts right. logits (..., V), targets (...); rows are taken `chunk_size`
    at a time, so at most one (chunk, V) float32 copy of the logits exists."""
    return _CrossEntropy.apply(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index, chunk_size, kernels
    )
{%- if cookiecutter.task == 'language_model' %}


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, chunk, ignore, kernels):
        with_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        head = weight.to(hidden.dtype)  # the matmuls run in the hidden states' (autocast) dtype
        acc = up(hidden).dtype  # float32, or float64 in precision checks
        n_scored = (targets != ignore).sum().clamp(min=1)
        grad_hidden = torch.zeros_like(hidden) if with_grad else None
        grad_weight = torch.zeros_like(weight, dtype=acc) if with_grad else None
        total = hidden.new_zeros((), dtype=acc)
        correct = hidden.new_zeros((), dtype=torch.long)
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start : start + chunk]  # (n, D)
            t = targets[start : start + chunk]
            logits = h @ head.T  # (n, V), the one chunk of logits that exists
            loss, hit, grad = scored_rows(logits, t, ignore, with_grad, kernels)
            total += loss.sum()
            correct += hit.sum()
            if with_grad:
                grad_hidden[start : start + chunk] = grad @ head
                grad_weight += (grad.T @ h).to(acc)
        if with_grad:
            ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype), n_scored)
        ctx.mark_non_differentiable(correct)
        return total / n_scored, correct

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_correct):
        grad_hidden, grad_weight, n_scored = ctx.saved_tensors
        scale = grad_loss / n_scored
        grad_hidden, grad_weight = grad_hidden * scale.to(grad_hidden.dtype), grad_weight * scale
        return grad_hidden, grad_weight, None, None, None, None


def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    ignore_index: int = -100,
    chunk_size: int = 4096,
    kernels: bool = True,
) -> tuple[Tensor, Tensor]:
    """`cross_entropy(hidden @ weight.T, targets)` without keeping (..., V) logits alive.

    hidden (..., D); weight (V, D); targets (...), equal to ignore_index where not scored.
    Returns (loss, correct): the mean loss over scored positions and how many of them the
    argmax predicts right (for accuracy).
    """
    if torch.is_autocast_enabled(hidden.device.type):
        hidden = hidden.to(torch.get_autocast_dtype(hidden.device.type))
    with torch.autocast(hidden.device.type, enabled=False):
        return _LinearCrossEntropy.apply(
            hidden.reshape(-1, hidden.shape[-1]),
            weight,
            targets.reshape(-1),
            chunk_size,
            ignore_index,
            kernels,
        )
{%- endif %}
