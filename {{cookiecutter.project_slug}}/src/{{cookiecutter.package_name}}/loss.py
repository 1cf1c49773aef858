{% if cookiecutter.task == 'language_model' -%}
"""Next-token loss over a large vocabulary without materialising the logits.

For a 50k vocabulary, B=8 and L=2048, the float32 logits alone take 3.3 GB, and the plain
loss peaks at 9.4 GiB above its inputs. `linear_cross_entropy` computes the head projection
and the cross-entropy chunk by chunk of tokens, and produces the gradients of the hidden
states and of the head weight in the same pass, so only one chunk of logits ever exists: 3.9
GiB, for 2.8 ms more per step on an H200 (liger-kernel's fused version takes 4.4 ms more;
`benchmarks/gpu_check.py --sections loss`). The loss equals
`F.cross_entropy(hidden @ weight.T, targets, ignore_index=ignore_index)`, and each chunk runs
through the same fused log-softmax/NLL kernels as that plain call.

{% else -%}
"""The validation loss.

{% endif -%}
`precise_cross_entropy` is the validation loss: the same value, without float32's floor at 0.
"""

import torch
import torch.nn.functional as F
from torch import Tensor
{%- if cookiecutter.task == 'language_model' %}


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, chunk_size: int, ignore: int):
        with_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        head = weight.to(hidden.dtype)  # the matmuls run in the hidden states' (autocast) dtype
        acc = torch.promote_types(hidden.dtype, torch.float32)  # float32, or float64 in tests
        n_scored = (targets != ignore).sum().clamp(min=1)
        grad_hidden = torch.zeros_like(hidden) if with_grad else None
        grad_weight = torch.zeros_like(weight, dtype=acc) if with_grad else None
        total = hidden.new_zeros((), dtype=acc)
        correct = hidden.new_zeros((), dtype=torch.long)
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start : start + chunk_size]  # (n, D)
            t = targets[start : start + chunk_size]  # (n,)
            # torch's own fused log-softmax/NLL kernels, forward and backward, on one chunk
            logits = (h @ head.T).to(acc).requires_grad_(with_grad)  # (n, V)
            with torch.enable_grad():
                loss = F.cross_entropy(logits, t, ignore_index=ignore, reduction="sum")
            total += loss.detach()
            correct += ((logits.detach().argmax(-1) == t) & (t != ignore)).sum()
            if not with_grad:
                continue
            (grad,) = torch.autograd.grad(loss, logits)  # softmax - one_hot, 0 on ignored rows
            grad = grad.to(hidden.dtype)
            grad_hidden[start : start + chunk_size] = grad @ head
            grad_weight += (grad.T @ h).to(acc)
        if with_grad:
            ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype), n_scored)
        ctx.mark_non_differentiable(correct)
        return total / n_scored, correct

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_correct):
        grad_hidden, grad_weight, n_scored = ctx.saved_tensors
        scale = grad_loss / n_scored
        return grad_hidden * scale.to(grad_hidden.dtype), grad_weight * scale, None, None, None


def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    ignore_index: int = -100,
    chunk_size: int = 4096,
) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy of `hidden @ weight.T` against `targets`, and the number of hits.

    hidden (..., D); weight (V, D); targets (...), equal to ignore_index where not scored.
    Returns (loss, correct): the mean loss over scored positions and how many of them the
    argmax predicts right (for accuracy), without keeping (..., V) logits alive.
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
        )
{%- endif %}


def precise_cross_entropy(
    logits: Tensor, targets: Tensor, ignore_index: int = -100, chunk_size: int = 4096
) -> Tensor:
    """Mean cross-entropy over the scored positions that stays exact as it approaches 0.

    `F.cross_entropy` takes log(1 + mass of the other classes) in the logits' dtype, and in
    float32 that is log(1.0) = 0 once the other classes' mass is below float32's epsilon, at a
    margin of about 17 logits over the runner-up. A validation loss of exactly 0.0
    ties every confident checkpoint, so a `run.monitor` on it cannot rank them. Here each
    position's loss is softplus(logsumexp of the other logits - the target's logit), which
    keeps its value down to margins of about 100 logits. logits (..., V), targets (...).
    """
    logits = logits.reshape(-1, logits.shape[-1])
    targets = targets.reshape(-1)
    total = logits.new_zeros((), dtype=torch.float32)
    for start in range(0, len(targets), chunk_size):  # one (chunk, V) copy at a time
        x = logits[start : start + chunk_size].float()
        t = targets[start : start + chunk_size]
        index = t.clamp(min=0)[:, None]  # an ignored position's row is computed, then dropped
        others = x.scatter(1, index, float("-inf")).logsumexp(1)
        loss = F.softplus(others - x.gather(1, index).squeeze(1))
        total += torch.where(t != ignore_index, loss, 0.0).sum()
    return total / (targets != ignore_index).sum().clamp(min=1)
