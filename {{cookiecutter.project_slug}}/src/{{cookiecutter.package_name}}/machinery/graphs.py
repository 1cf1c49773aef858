"""CUDA-graph replay of the training loss: its forward and backward, one capture per shape.

On a fast GPU a Mamba step is often waiting for Python: mamba-ssm's Mamba2 launches dozens of
Triton kernels per layer, one at a time, and a small model spends nearly all of its step in
launch overhead. `torch.cuda.make_graphed_callables` records the forward and the backward once
(after warm-up iterations on a side stream, where Triton autotunes) and then replays each with
a single launch. Inputs are copied into the graph's static buffers on every call; parameters
are read where they live, so optimizer updates and restored checkpoints are seen by every
replay. The optimizer, clipping, logging and validation stay eager.

`model.cuda_graphs` picks the policy: `auto` replays wherever it is known to be safe (one CUDA
process, fused kernels, no gradient accumulation, no fp16 loss scaling), `on` insists and
refuses with one line where it cannot work, `off` never replays.
"""

from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

Setting = Literal["auto", "on", "off"]
MAX_SHAPES = 4  # captures kept per run (a ragged last batch or a length curriculum adds shapes)


def decide(
    setting: Setting,
    *,
    device_type: str,
    world_size: int,
    accumulate_grad_batches: int,
    precision: str,
    impl: str,
) -> tuple[bool, str]:
    """Whether to replay the training loss from CUDA graphs, and why (or why not).

    Raises ValueError for `on` where replay cannot work, so the CLI stops before any GPU time.
    """
    if setting == "off":
        return False, "model.cuda_graphs=off"
    obstacles = []
    if device_type != "cuda":
        obstacles.append(f"it needs a CUDA device and this run is on {device_type}")
    if world_size > 1:
        obstacles.append(
            f"it replays one process's step and this run has {world_size} processes "
            "(DDP's gradient hooks run outside the graph)"
        )
    if accumulate_grad_batches > 1:
        obstacles.append(
            f"trainer.accumulate_grad_batches={accumulate_grad_batches}: gradients must be "
            "complete after each replayed backward"
        )
    if precision.startswith("16"):
        obstacles.append(f"precision={precision} scales the loss outside the graph; use bf16-mixed")
    if obstacles:
        if setting == "on":
            raise ValueError(
                f"model.cuda_graphs=on cannot be used: {obstacles[0]}. "
                "Use model.cuda_graphs=auto (replay wherever it is safe) or off."
            )
        return False, obstacles[0]
    if setting == "auto" and impl != "fused":
        return False, f"backbone.impl={impl}: auto replays only the fused kernels"
    return True, f"model.cuda_graphs={setting}: forward and backward replayed from CUDA graphs"


class _Capture(nn.Module):
    """A fresh module per captured shape: make_graphed_callables replaces its forward."""

    def __init__(self, owner: nn.Module, fn):
        super().__init__()
        self.owner = owner  # its parameters become the graph's inputs
        self.fn = fn

    def forward(self, *inputs: Tensor):
        return self.fn(*inputs)


class GraphedLoss:
    """Calls `fn(*inputs) -> tuple of tensors` through a CUDA graph captured for each shape.

    `owner` is the module whose parameters `fn` uses. Shapes beyond MAX_SHAPES run eagerly.
    """

    def __init__(self, owner: nn.Module, fn):
        self.owner, self.fn = owner, fn
        self.graphs: dict[tuple, nn.Module] = {}

    def __call__(self, *inputs: Tensor):
        key = tuple((tuple(t.shape), t.dtype) for t in inputs)
        graphed = self.graphs.get(key)
        if graphed is None:
            if len(self.graphs) >= MAX_SHAPES:
                return self.fn(*inputs)
            shapes = ", ".join(f"{tuple(t.shape)} {t.dtype}" for t in inputs)
            rank_zero_info(f"capturing CUDA graphs of the training loss for inputs {shapes}")
            # the parameters' gradient accumulators were made on the warm-up's side stream;
            # torch orders the streams itself, so its warning about the mismatch is noise here
            quiet = getattr(
                torch.autograd.graph, "set_warn_on_accumulate_grad_stream_mismatch", None
            )
            if quiet is not None:
                quiet(False)
            graphed = torch.cuda.make_graphed_callables(
                _Capture(self.owner, self.fn),
                tuple(t.detach() for t in inputs),
                num_warmup_iters=3,  # Triton autotunes in these, on a side stream
                allow_unused_input=True,  # a parameter the loss does not use is no error
            )
            self.graphs[key] = graphed
        return graphed(*inputs)
