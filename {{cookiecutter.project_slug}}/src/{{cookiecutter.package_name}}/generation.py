"""Decoding: the prompt through the chunked forward once, then one recurrent step per token.

    for tokens in model.stream(prompts, max_new_tokens=64):   # (B, 1) per step, as they come
        ...

A Mamba layer's memory of the past is two small tensors per sample (the last d_conv inputs of
its convolution and its SSM state), so a new token costs the same at any position. `Decoder`
allocates them once per batch size, fills them from the prompts with the parallel forward
(the chunked kernels), then advances all rows by one token per step.

On a GPU (backbone impl fused) the step is one CUDA graph, captured once per batch size and
replayed per token, as mamba-ssm's `generate(cg=True)` does (mamba_ssm/utils/generation.py).
Ours differs in what the graph holds: the sampling is inside it (no logits leave it), and the
step reads the weights through `_StepWeights`, so A = -exp(A_log) and, under autocast, the
bfloat16 copies of the matrices are computed once per call instead of once per token per layer.
The reference twin (the CPU) runs its own `step` eagerly, exactly as the model's forward does.
"""

import contextlib
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone import InferenceParams


@dataclass(frozen=True)
class Sampling:
    """How a token is chosen from the logits: temperature 0 is greedy (the argmax)."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None


def sample_token(
    logits: Tensor, temperature: float, top_k: int | None = None, top_p: float | None = None
) -> Tensor:
    """One token per row of logits (B, V): the argmax at temperature 0, else a draw.

    The draw keeps the top_k likeliest tokens, then the smallest set of them whose probability
    reaches top_p, and samples from the softmax at `temperature` renormalised over what is
    kept. It never waits for the GPU (a CUDA graph can hold it): argmax(p / E) with E ~ Exp(1)
    independent per token picks token i with probability p_i, like torch.multinomial, whose
    validity check reads the probabilities back to the host. Draws use torch's default
    generator: seed it with torch.manual_seed.
    """
    if temperature <= 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        ordered, order = logits.sort(dim=-1, descending=True)
        before = ordered.softmax(-1).cumsum(-1) - ordered.softmax(-1)  # mass ahead of each
        ordered = ordered.masked_fill(before >= top_p, float("-inf"))  # the first always stays
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, ordered)
    race = torch.empty_like(logits).exponential_().clamp_(min=torch.finfo(logits.dtype).tiny)
    return (logits.softmax(-1) / race).argmax(-1, keepdim=True)


def compute_dtype(model: nn.Module) -> torch.dtype:
    """The dtype the matrices multiply in: autocast's where it is on, else the weights'."""
    weight = model.output_weight
    device = weight.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return weight.dtype


class _StepWeights:
    """What the fused step multiplies by: each linear layer's weight and bias in the compute
    dtype (the parameter itself, or a copy where autocast computes in another dtype), and each
    mixer's A = -exp(A_log), which mamba-ssm's step computes again at every token.

    `refresh` recomputes the copies and A from the parameters at the start of every call, so a
    model trained between two calls decodes with its new weights.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        self.dtype, self.copies = dtype, []
        self.head = self._cast(model.output_weight)
        self.mixers = [layer.mixer for layer in model.backbone.layers]
        self.layers = []
        for layer in model.backbone.layers:
            names = ("in_proj", "out_proj", "x_proj", "dt_proj")  # the last two: Mamba1's
            linears = {n: getattr(layer.mixer, n, None) for n in names}
            if layer.mlp is not None:
                linears.update(fc1=layer.mlp.fc1, fc2=layer.mlp.fc2)
            weights = {"A": -torch.exp(layer.mixer.A_log.float())}
            for name, linear in linears.items():
                if linear is not None:
                    weights[name] = self._cast(linear.weight)
                    weights[f"{name}_bias"] = self._cast(linear.bias)
            self.layers.append(weights)

    def _cast(self, weight: Tensor | None) -> Tensor | None:
        if weight is None or weight.dtype == self.dtype:
            return weight
        copy = weight.detach().to(self.dtype)
        self.copies.append((weight, copy))
        return copy

    def refresh(self) -> None:
        for weight, copy in self.copies:
            copy.copy_(weight)
        for mixer, weights in zip(self.mixers, self.layers, strict=True):
            weights["A"].copy_(-torch.exp(mixer.A_log.float()))


def _mamba2_step(m: nn.Module, w: dict, u: Tensor, conv_state: Tensor, ssm_state: Tensor):
    """mamba-ssm's Mamba2.step with the same kernels, reading A from w: u (B, D) -> (B, D)."""
    from causal_conv1d import causal_conv1d_update
    from mamba_ssm.ops.triton.selective_state_update import selective_state_update

    b, h, p, n, g = u.shape[0], m.nheads, m.headdim, m.d_state, m.ngroups
    z, xBC, dt = F.linear(u.to(w["in_proj"].dtype), w["in_proj"], w["in_proj_bias"]).split(
        [m.d_ssm, m.d_ssm + 2 * g * n, h], dim=-1
    )
    xBC = causal_conv1d_update(xBC, conv_state, m.conv1d.weight.squeeze(1), m.conv1d.bias, "silu")
    x, B, C = xBC.split([m.d_ssm, g * n, g * n], dim=-1)
    y = selective_state_update(  # per head: dt, A, D and dt_bias are shared by its p channels
        ssm_state,
        x.view(b, h, p),
        dt[:, :, None].expand(b, h, p),
        w["A"][:, None, None].expand(h, p, n),
        B.view(b, g, n),
        C.view(b, g, n),
        m.D[:, None].expand(h, p),
        dt_bias=m.dt_bias[:, None].expand(h, p),
        dt_softplus=True,
    )  # (B, H, P)
    y = m.norm(y.view(b, m.d_ssm), z)  # gated RMSNorm
    return F.linear(y.to(w["out_proj"].dtype), w["out_proj"], w["out_proj_bias"])


def _mamba1_step(m: nn.Module, w: dict, u: Tensor, conv_state: Tensor, ssm_state: Tensor):
    """mamba-ssm's Mamba.step with the same kernels, reading A from w: u (B, D) -> (B, D)."""
    from causal_conv1d import causal_conv1d_update
    from mamba_ssm.ops.triton.selective_state_update import selective_state_update

    x, z = F.linear(u.to(w["in_proj"].dtype), w["in_proj"], w["in_proj_bias"]).chunk(2, -1)
    x = causal_conv1d_update(x, conv_state, m.conv1d.weight.squeeze(1), m.conv1d.bias, "silu")
    dt, B, C = F.linear(x, w["x_proj"], w["x_proj_bias"]).split(
        [m.dt_rank, m.d_state, m.d_state], dim=-1
    )
    dt = F.linear(dt, w["dt_proj"])  # its bias is added by the kernel, in float32
    y = selective_state_update(
        ssm_state, x, dt, w["A"], B, C, m.D, z=z, dt_bias=m.dt_proj.bias, dt_softplus=True
    )  # (B, d_inner)
    return F.linear(y, w["out_proj"], w["out_proj_bias"])


class Decoder:
    """One batch size's decoding: the caches, the step, and on a GPU its CUDA graph.

    `start` fills the caches from the prompts and returns the first new token of every row;
    each `advance` returns the next. The token buffer is the step's input and its output, so a
    replayed graph needs nothing from the host. Build it once, use it for many calls.
    """

    def __init__(self, model: nn.Module, batch: int, dtype: torch.dtype, sampling: Sampling,
                 weights: _StepWeights | None, cuda_graph: bool):  # fmt: skip
        self.model = weakref.proxy(model)  # the model owns its decoders, not the other way
        self.batch, self.dtype, self.sampling, self.weights = batch, dtype, sampling, weights
        self.fused = weights is not None  # the reference twin steps through its own forward
        device = model.output_weight.device
        self.caches = model.backbone.allocate_inference_cache(batch, 1, dtype=self.dtype)
        self.params = InferenceParams(0, batch, key_value_memory_dict=self.caches)
        self.token = torch.zeros(batch, 1, dtype=torch.long, device=device)  # (B, 1)
        self.graph = None
        if cuda_graph and self.fused and device.type == "cuda":
            self.graph = self._capture()

    def _logits(self, token: Tensor) -> Tensor:
        """One token per row (B, 1) -> next-token logits (B, V); the caches move one step."""
        if not self.fused:  # the twin's own step, through the model's forward
            return self.model(token, inference_params=self.params)[:, -1]
        step = _mamba2_step if self.model.backbone.config.mixer == "Mamba2" else _mamba1_step
        backbone = self.model.backbone
        fp32 = {"residual_in_fp32": backbone.residual_in_fp32}
        hidden, residual = backbone.embedding(token), None  # (B, 1, D)
        for layer, w, (conv_state, ssm_state) in zip(
            backbone.layers, self.weights.layers, self.caches.values(), strict=True
        ):
            hidden, residual = layer.norm(hidden, residual, prenorm=True, **fp32)
            hidden = step(layer.mixer, w, hidden.squeeze(1), conv_state, ssm_state).unsqueeze(1)
            if layer.mlp is not None:  # mamba-ssm's GatedMLP
                hidden, residual = layer.norm2(hidden, residual, prenorm=True, **fp32)
                a, gate = F.linear(hidden.to(self.dtype), w["fc1"], w["fc1_bias"]).chunk(2, -1)
                hidden = F.linear(a * F.silu(gate), w["fc2"], w["fc2_bias"])
        hidden = backbone.norm_f(hidden, residual, prenorm=False, **fp32)
        return F.linear(hidden.to(self.dtype), self.weights.head)[:, -1]  # (B, V)

    def _advance(self) -> None:
        """Every row one token further, in place: the caches and the token buffer."""
        s = self.sampling
        # the fused step casts by itself (_StepWeights); autocast would cast the weights again
        with torch.autocast("cuda", enabled=False) if self.fused else contextlib.nullcontext():
            logits = self._logits(self.token).float()
        self.token.copy_(sample_token(logits, s.temperature, s.top_k, s.top_p))

    def _capture(self) -> torch.cuda.CUDAGraph:
        """The step as a CUDA graph, after two warm-up steps (Triton compiles, cuBLAS plans) on a
        side stream, as torch.cuda.graph's documentation asks. The caches are overwritten by
        every prefill, so the warm-up's steps on them leave nothing behind."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._advance()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._advance()
        return graph

    def start(self, prompts: list[Tensor]) -> Tensor:
        """Fill every row's caches from its prompt; the first new token of each row, (B, 1).

        Prompts of one length run through the parallel forward together; a row's caches hold
        its own prompt only, so a batch of different lengths decodes as each prompt alone.
        """
        if self.fused:
            self.weights.refresh()
        rows_of: dict[int, list[int]] = {}
        for row, prompt in enumerate(prompts):
            rows_of.setdefault(len(prompt), []).append(row)
        logits = None
        for length, rows in rows_of.items():
            whole = len(rows) == self.batch
            caches = self.caches if whole else self.model.backbone.allocate_inference_cache(
                len(rows), length, dtype=self.dtype
            )  # fmt: skip
            params = InferenceParams(length, len(rows), key_value_memory_dict=caches)
            ids = torch.stack([prompts[r] for r in rows])  # (b, L)
            hidden = self.model.backbone(ids, inference_params=params)[:, -1]  # (b, D)
            part = F.linear(hidden, self.model.output_weight)  # (b, V)
            if logits is None:
                logits = part.new_empty(self.batch, part.shape[-1])
            index = torch.tensor(rows, device=part.device)
            logits[index] = part
            if not whole:
                for layer, states in caches.items():
                    for full, state in zip(self.caches[layer], states, strict=True):
                        full[index] = state
        self.params.seqlen_offset = max(rows_of)  # > 0: the twin's forward steps from now on
        s = self.sampling
        self.token.copy_(sample_token(logits.float(), s.temperature, s.top_k, s.top_p))
        return self.token.clone()

    def advance(self) -> Tensor:
        """Every row one token further: the next tokens (B, 1)."""
        if self.graph is not None:
            self.graph.replay()
        else:
            self._advance()
        return self.token.clone()


# A model's decoders, by batch size, dtype, sampling and graph use, and their step weights by
# dtype. Beside the model rather than in it, so the model stays copyable and picklable; they go
# when the model goes.
_decoders: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def decoder(model: nn.Module, batch: int, sampling: Sampling, cuda_graph: bool) -> Decoder:
    """The model's decoder for this batch size under the current dtype (autocast or not)."""
    dtype = compute_dtype(model)
    # a moved or converted model has new parameter tensors: the old decoders point at the old
    params = tuple((p.data_ptr(), p.dtype) for p in model.parameters())
    entry = _decoders.get(model)
    if entry is None or entry["params"] != params:
        entry = _decoders[model] = {"params": params, "weights": {}, "decoders": {}}
    fused = model.backbone.impl == "fused"
    if fused and dtype not in entry["weights"]:
        entry["weights"][dtype] = _StepWeights(model, dtype)
    key = (batch, dtype, sampling, cuda_graph)
    if key not in entry["decoders"]:
        weights = entry["weights"][dtype] if fused else None
        entry["decoders"][key] = Decoder(model, batch, dtype, sampling, weights, cuda_graph)
    return entry["decoders"][key]


@torch.no_grad()
def stream(
    model: nn.Module,
    prompts: Tensor | Sequence[Tensor],
    max_new_tokens: int,
    sampling: Sampling,
    cuda_graph: bool = True,
) -> Iterator[Tensor]:
    """The new tokens of every prompt, one step at a time: (B, 1) per step, on the model's
    device, max_new_tokens steps. prompts: ids (B, L), or B 1-D id tensors of any lengths."""
    prompts = [p.to(model.output_weight.device) for p in prompts]
    if not prompts or min(len(p) for p in prompts) < 1:
        raise ValueError("generate needs at least one prompt, and every prompt at least one token")
    run = decoder(model, len(prompts), sampling, cuda_graph)
    yield run.start(prompts)
    for _ in range(max_new_tokens - 1):
        yield run.advance()
