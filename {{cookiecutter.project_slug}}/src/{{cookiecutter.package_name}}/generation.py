"""Decoding: the prompt through the chunked forward once, then one recurrent step per token.

    for tokens in model.stream(prompts, max_new_tokens=64):   # (B, 1) per step, as they come
        ...

A Mamba layer's memory of the past is two small tensors per sample (the last d_conv inputs of
its convolution and its SSM state), so a new token costs the same at any position. `Decoder`
allocates them once per batch size, fills them from the prompts with the parallel forward
(the chunked kernels), then advances all rows by one token per step.

Each mixer owns its decoding: `allocate_inference_cache` makes its state and `step` advances
it by one token; this file calls the backbone's forward and reads nothing inside a mixer. On a
GPU the step is one CUDA graph, captured once per batch size and replayed per token, as
mamba-ssm's `generate(cg=True)` does (mamba_ssm/utils/generation.py). Ours also holds the
sampling (no logits leave the graph) and, under autocast, reads copies of the matrices in
autocast's dtype made once per call (`_CastWeights`) instead of casting them at every token.
"""

import math
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


class _CastWeights:
    """Under autocast, every linear layer's weight and bias in autocast's dtype, made once per
    call instead of once per token and layer (autocast casts a float32 weight at every use).

    Which tensors: those of the backbone's `nn.Linear` modules, whatever mixer holds them, and
    the output head. `refresh` copies the parameters again, so a model trained between two
    calls decodes with its new weights; the copies keep their addresses for the CUDA graph.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        self.pairs = []  # (parameter, its copy)
        self.backbone = {}  # name in the backbone -> copy, for torch.func.functional_call
        for name, module in model.backbone.named_modules():
            if isinstance(module, nn.Linear):
                for kind in ("weight", "bias"):
                    param = getattr(module, kind)
                    if param is not None and param.dtype != dtype:
                        self.backbone[f"{name}.{kind}"] = self._copy(param, dtype)
        head = model.output_weight
        self.head = head if head.dtype == dtype else self._copy(head, dtype)

    def _copy(self, param: Tensor, dtype: torch.dtype) -> Tensor:
        copy = param.detach().to(dtype)
        self.pairs.append((param, copy))
        return copy

    def refresh(self) -> None:
        for param, copy in self.pairs:
            copy.copy_(param)


class Decoder:
    """One batch size's decoding: the caches, the step, and on a GPU its CUDA graph.

    `start` fills the caches from the prompts and returns the first new token of every row;
    each `advance` returns the next. A step is the backbone's own forward on one token per
    row with `inference_params` past the prompt, which every mixer answers with its `step`.
    The token buffer is the step's input and its output, so a replayed graph needs nothing
    from the host. Build it once, use it for many calls of up to `max_seqlen` tokens a row
    (prompt and new ones: the attention layers' caches hold every one).
    """

    def __init__(self, model: nn.Module, batch: int, dtype: torch.dtype, sampling: Sampling,
                 cuda_graph: bool, max_seqlen: int = 1):  # fmt: skip
        self.model = weakref.proxy(model)  # the model owns its decoders, not the other way
        self.batch, self.dtype, self.sampling = batch, dtype, sampling
        self.max_seqlen = max_seqlen
        device = model.output_weight.device
        self.casts = _CastWeights(model, dtype)
        self.caches = model.backbone.allocate_inference_cache(batch, max_seqlen, dtype=dtype)
        self.params = InferenceParams(max_seqlen, batch, key_value_memory_dict=self.caches)
        self.token = torch.zeros(batch, 1, dtype=torch.long, device=device)  # (B, 1)
        self.graph = None
        if cuda_graph and device.type == "cuda":
            self.graph = self._capture()

    def _hidden(self, ids: Tensor, params: InferenceParams) -> Tensor:
        """The backbone's last hidden state (b, D) for ids (b, L), with the cast weights."""
        backbone, kwargs = self.model.backbone, {"inference_params": params}
        if self.casts.backbone:
            hidden = torch.func.functional_call(backbone, self.casts.backbone, (ids,), kwargs)
        else:
            hidden = backbone(ids, **kwargs)
        return hidden[:, -1]

    def _head(self, hidden: Tensor) -> Tensor:
        return F.linear(hidden.to(self.casts.head.dtype), self.casts.head)  # (b, V)

    def _advance(self) -> None:
        """Every row one token further, in place: the caches and the token buffer."""
        s = self.sampling
        logits = self._head(self._hidden(self.token, self.params)).float()
        self.token.copy_(sample_token(logits, s.temperature, s.top_k, s.top_p))

    def _capture(self) -> torch.cuda.CUDAGraph:
        """The step as a CUDA graph, after two warm-up steps (Triton compiles, cuBLAS plans) on a
        side stream, as torch.cuda.graph's documentation asks. The caches are overwritten by
        every prefill, so the warm-up's steps on them leave nothing behind."""
        self.params.seqlen_offset = 1  # the mixers' step, not the prompt's forward
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
        self.casts.refresh()
        rows_of: dict[int, list[int]] = {}
        for row, prompt in enumerate(prompts):
            rows_of.setdefault(len(prompt), []).append(row)
        logits = None
        for length, rows in rows_of.items():
            whole = len(rows) == self.batch
            caches = self.caches if whole else self.model.backbone.allocate_inference_cache(
                len(rows), self.max_seqlen, dtype=self.dtype
            )  # fmt: skip
            params = InferenceParams(length, len(rows), key_value_memory_dict=caches)
            ids = torch.stack([prompts[r] for r in rows])  # (b, L)
            part = self._head(self._hidden(ids, params))  # (b, V)
            if logits is None:
                logits = part.new_empty(self.batch, part.shape[-1])
            index = torch.tensor(rows, device=part.device)
            logits[index] = part
            if not whole:  # per-row states go to their rows; what a layer keeps for all
                for layer, states in caches.items():  # rows (its prefill's constants) is copied
                    for full, state in zip(self.caches[layer], states, strict=True):
                        if full.shape == state.shape:
                            full.copy_(state)
                        else:
                            full[index] = state
        self.params.seqlen_offset = max(rows_of)  # > 0: the mixers step from now on
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


# A model's decoders, by batch size, dtype, sampling and graph use. Beside the model rather
# than in it, so the model stays copyable and picklable; they go when the model goes.
_decoders: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def decoder(model: nn.Module, batch: int, sampling: Sampling, cuda_graph: bool,
            length: int = 1) -> Decoder:  # fmt: skip
    """The model's decoder for this batch size under the current dtype (autocast or not), for
    rows of up to `length` tokens. A Mamba layer's state is the same size at any length; an
    attention layer's cache holds every token, so a hybrid's decoder is rebuilt (and its graph
    captured again) for a call longer than it holds, with room for the next power of two."""
    dtype = compute_dtype(model)
    # a moved or converted model has new parameter tensors: the old decoders point at the old
    params = tuple((p.data_ptr(), p.dtype) for p in model.parameters())
    entry = _decoders.get(model)
    if entry is None or entry["params"] != params:
        entry = _decoders[model] = {"params": params, "decoders": {}}
    key = (batch, dtype, sampling, cuda_graph)
    found = entry["decoders"].get(key)
    grows = bool(model.backbone.config.attn_layer_idx)
    if found is None or (grows and found.max_seqlen < length):
        room = 2 ** math.ceil(math.log2(max(length, 64))) if grows else 1
        entry["decoders"][key] = Decoder(model, batch, dtype, sampling, cuda_graph, room)
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
    length = max(len(p) for p in prompts) + max_new_tokens
    run = decoder(model, len(prompts), sampling, cuda_graph, length)
    yield run.start(prompts)
    for _ in range(max_new_tokens - 1):
        yield run.advance()
