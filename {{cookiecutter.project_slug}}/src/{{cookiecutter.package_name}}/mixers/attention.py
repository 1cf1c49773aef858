"""MHA: multi-head attention as a layer of the backbone, mamba_ssm.modules.mha.MHA's twin.

The same constructor arguments, parameter names and shapes as mamba-ssm's class (in_proj,
conv1d when d_conv > 0, out_proj), so the attention layers of its hybrid checkpoints
(state-spaces/mamba2attn-2.7b) load with strict=True. What it computes:

    in_proj -> [q, k, v | mlp_up, mlp_gate] -> causal conv over q, k, v (d_conv > 0)
            -> rotary on the first rotary_emb_dim channels of q and k
            -> softmax(q k^T * softmax_scale) v over num_heads queries and num_heads_kv keys
            -> out_proj([context | mlp_up * silu(mlp_gate)])

Training is `F.scaled_dot_product_attention` (flash attention on a GPU that has it). Decoding
keeps every past key and value: the cache is a (B, max_seqlen, 2, num_heads_kv, head_dim)
buffer and a (B,) count of the positions each row holds. A step writes its key and value at
that count, attends to the positions below it and adds one, all on the device: a replayed
CUDA graph finds the position in the cache, not in an argument fixed when it was captured.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import RecurrentMixer


class MHA(RecurrentMixer):
    """Self-attention with grouped keys and values (num_heads_kv < num_heads: GQA/MQA).

    mlp_dim > 0 adds mamba-ssm's parallel MLP: in_proj also makes mlp_dim channels (rounded up
    to a multiple of 256), whose halves a and gate give a * silu(gate), which out_proj reads
    beside the attention's output. d_conv > 0 runs a depthwise causal convolution (no
    activation) over q, k and v before the heads split. The rotary embedding has no weights.
    """

    def __init__(
        self,
        embed_dim,
        num_heads,
        num_heads_kv=None,
        head_dim=None,
        mlp_dim=0,
        qkv_proj_bias=True,
        out_proj_bias=True,
        softmax_scale=None,
        causal=False,
        layer_idx=None,
        d_conv=0,
        rotary_emb_dim=0,
        rotary_emb_base=10000.0,
        rotary_emb_interleaved=False,
        kernels: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        problem = attention_problem(
            embed_dim, num_heads, num_heads_kv, head_dim, rotary_emb_dim, mlp_dim
        )
        if problem:
            raise ValueError(f"MHA layer {layer_idx}: {problem}")
        num_heads_kv = num_heads if num_heads_kv is None else num_heads_kv
        head_dim = head_dim or embed_dim // num_heads
        self.embed_dim, self.layer_idx, self.kernels = embed_dim, layer_idx, kernels
        self.num_heads, self.num_heads_kv, self.head_dim = num_heads, num_heads_kv, head_dim
        self.softmax_scale, self.causal, self.d_conv = softmax_scale, causal, d_conv
        self.rotary_emb_dim, self.rotary_emb_base = rotary_emb_dim, rotary_emb_base
        self.rotary_emb_interleaved = rotary_emb_interleaved
        self.mlp_dim = math.ceil(mlp_dim / 256) * 256
        self.qkv_dim = head_dim * (num_heads + 2 * num_heads_kv)
        self.in_proj = nn.Linear(embed_dim, self.qkv_dim + self.mlp_dim, bias=qkv_proj_bias,
                                 **factory)  # fmt: skip
        if d_conv > 0:
            self.conv1d = nn.Conv1d(self.qkv_dim, self.qkv_dim, d_conv, padding=d_conv - 1,
                                    groups=self.qkv_dim, **factory)  # fmt: skip
        out_dim = head_dim * num_heads + self.mlp_dim // 2
        self.out_proj = nn.Linear(out_dim, embed_dim, bias=out_proj_bias, **factory)

    # ------------------------------------------------------------------------- pieces
    def _project(self, u: Tensor) -> tuple[Tensor, Tensor | None]:
        """u (..., embed_dim) -> qkv (..., qkv_dim) and the MLP's output (..., mlp_dim / 2)."""
        qkv = self.in_proj(u)
        if not self.mlp_dim:
            return qkv, None
        qkv, mlp = qkv.split([self.qkv_dim, self.mlp_dim], dim=-1)
        up, gate = mlp.chunk(2, dim=-1)
        return qkv, up * F.silu(gate)

    def _heads(self, qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, L, qkv_dim) -> q (B, L, H, D), k and v (B, L, Hkv, D)."""
        q_dim = self.num_heads * self.head_dim
        q, kv = qkv.split([q_dim, self.qkv_dim - q_dim], dim=-1)  # kv: [k of every head, v ...]
        k, v = kv.unflatten(-1, (2, self.num_heads_kv, self.head_dim)).unbind(-3)
        return q.unflatten(-1, (self.num_heads, self.head_dim)), k, v

    def _rotate(self, x: Tensor, positions: Tensor) -> Tensor:
        """Rotary embedding of x (B, L, heads, D) at positions broadcastable to (B, L).

        Channel pairs turn by position * base^(-2i / rotary_emb_dim); the pairs are the two
        halves of the rotated channels (GPT-NeoX's layout) or neighbours (interleaved, GPT-J's).
        Computed in float32 from the position, so nothing depends on a length fixed in advance.
        """
        r = self.rotary_emb_dim
        if not r:
            return x
        exponent = torch.arange(0, r, 2, device=x.device, dtype=torch.float32) / r
        angle = positions.float()[..., None, None] / self.rotary_emb_base**exponent  # (.., 1, r/2)
        cos, sin = angle.cos(), angle.sin()
        turned = x[..., :r].float()
        if self.rotary_emb_interleaved:
            a, b = turned[..., 0::2], turned[..., 1::2]
            turned = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)
        else:
            a, b = turned.chunk(2, dim=-1)
            turned = torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)
        return torch.cat([turned.to(x.dtype), x[..., r:]], dim=-1)

    def _conv_weight(self) -> Tensor:
        return self.conv1d.weight.squeeze(1)  # (qkv_dim, d_conv)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
        """q (B, Lq, H, D), k and v (B, Lk, Hkv, D) -> (B, Lq, H * D); mask (B, 1, Lq, Lk)."""
        context = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
            is_causal=self.causal and mask is None, scale=self.softmax_scale,
            enable_gqa=self.num_heads != self.num_heads_kv,
        )  # fmt: skip
        return context.transpose(1, 2).flatten(-2)

    def _out(self, context: Tensor, mlp: Tensor | None) -> Tensor:
        return self.out_proj(context if mlp is None else torch.cat([context, mlp], dim=-1))

    # -------------------------------------------------------------------------- paths
    def forward(self, u: Tensor, inference_params=None, **kwargs) -> Tensor:
        """u: (B, L, embed_dim) -> (B, L, embed_dim). A cache made here holds
        inference_params.max_seqlen positions; the rest is every mixer's (RecurrentMixer)."""
        if inference_params is not None:
            cache = inference_params.key_value_memory_dict
            if self.layer_idx not in cache:
                max_seqlen = inference_params.max_seqlen
                cache[self.layer_idx] = self.allocate_inference_cache(u.shape[0], max_seqlen)
        return super().forward(u, inference_params)

    def _forward(self, u: Tensor, kv_cache=None, lengths=None, conv_state=None) -> Tensor:
        """u (B, L, embed_dim) -> (B, L, embed_dim); a given cache is filled from the sequence."""
        length = u.shape[1]
        qkv, mlp = self._project(u)
        if self.d_conv:
            # the last d_conv inputs, which a step reads (mamba-ssm 2.3.2's MHA keeps the conv's
            # outputs here, so its tokens after a prompt differ from its own full forward's)
            if conv_state is not None:
                window = qkv.transpose(1, 2)
                conv_state.copy_(F.pad(window, (self.d_conv - length, 0)))
            conv = F.conv1d(qkv.transpose(1, 2), self.conv1d.weight, self.conv1d.bias,
                            padding=self.d_conv - 1, groups=self.qkv_dim)  # fmt: skip
            qkv = conv[..., :length].transpose(1, 2)
        q, k, v = self._heads(qkv)
        positions = torch.arange(length, device=u.device)
        q, k = self._rotate(q, positions), self._rotate(k, positions)
        if kv_cache is not None:
            if length > kv_cache.shape[1]:
                raise ValueError(
                    f"MHA layer {self.layer_idx}: a prompt of {length} tokens does not fit its "
                    f"key-value cache of {kv_cache.shape[1]} positions; allocate the cache for "
                    "the prompt and the new tokens together"
                )
            kv_cache[:, :length] = torch.stack([k, v], dim=2).to(kv_cache.dtype)
            lengths.fill_(length)
        return self._out(self._attend(q, k, v), mlp)

    def step(self, u: Tensor, kv_cache: Tensor, lengths: Tensor, conv_state=None):
        """One token per row: u (B, 1, embed_dim) -> (B, 1, embed_dim).

        The row's key and value go to position lengths[b] of the cache, the query attends to
        positions 0..lengths[b] (every cached one: a single query sees the whole past), and
        lengths grows by one, in place. No value is read back to the host.
        """
        qkv, mlp = self._project(u)  # (B, 1, qkv_dim)
        if self.d_conv:
            conv_state.copy_(torch.cat([conv_state[..., 1:], qkv.transpose(1, 2)], dim=-1))
            qkv = (conv_state * self._conv_weight()).sum(-1, keepdim=True).transpose(1, 2)
            if self.conv1d.bias is not None:
                qkv = qkv + self.conv1d.bias
            qkv = qkv.to(u.dtype)
        q, k, v = self._heads(qkv)
        position = lengths[:, None]  # (B, 1)
        q, k = self._rotate(q, position), self._rotate(k, position)
        rows = torch.arange(u.shape[0], device=u.device)
        kv_cache[rows, lengths] = torch.stack([k, v], dim=2)[:, 0].to(kv_cache.dtype)
        seen = torch.arange(kv_cache.shape[1], device=u.device) <= position  # (B, max_seqlen)
        keys, values = kv_cache.to(q.dtype).unbind(2)
        context = self._attend(q, keys, values, seen[:, None, None, :])
        lengths.add_(1)
        state = (kv_cache, lengths) + ((conv_state,) if self.d_conv else ())
        return self._out(context, mlp), *state

    def allocate_inference_cache(self, batch_size, max_seqlen, dtype=None, **kwargs):
        """The decoding state of `batch_size` sequences of up to `max_seqlen` tokens: keys and
        values (B, max_seqlen, 2, Hkv, D) in mamba-ssm's layout, the count of positions each
        row holds (B,), and with d_conv the convolution's last inputs (B, qkv_dim, d_conv)."""
        if not max_seqlen:
            raise ValueError(
                f"MHA layer {self.layer_idx}: a key-value cache needs max_seqlen, the most "
                f"tokens a row will hold (prompt and new tokens); got {max_seqlen!r}"
            )
        device = self.out_proj.weight.device
        dtype = dtype or self.out_proj.weight.dtype
        shape = (batch_size, max_seqlen, 2, self.num_heads_kv, self.head_dim)
        cache = (
            torch.zeros(shape, device=device, dtype=dtype),
            torch.zeros(batch_size, device=device, dtype=torch.long),
        )
        if self.d_conv:
            cache += (
                torch.zeros(batch_size, self.qkv_dim, self.d_conv, device=device, dtype=dtype),
            )
        return cache


def attention_problem(embed_dim, num_heads, num_heads_kv, head_dim, rotary_emb_dim, mlp_dim):
    """What is wrong with an attention layer's shape, in words; None when nothing is."""
    num_heads_kv = num_heads if num_heads_kv is None else num_heads_kv
    for name, value in (("num_heads", num_heads), ("num_heads_kv", num_heads_kv)):
        if not isinstance(value, int) or value <= 0:
            return f"{name}={value!r} must be a positive integer"
    if num_heads % num_heads_kv:
        return (
            f"num_heads={num_heads} is not divisible by num_heads_kv={num_heads_kv}; each key "
            "and value head serves the same number of query heads"
        )
    if head_dim is None and embed_dim % num_heads:
        return (
            f"d_model={embed_dim} does not split into num_heads={num_heads} heads; set head_dim "
            "or a num_heads that divides d_model"
        )
    head_dim = head_dim or embed_dim // num_heads
    if not isinstance(head_dim, int) or head_dim <= 0:
        return f"head_dim={head_dim!r} must be a positive integer"
    if rotary_emb_dim < 0 or rotary_emb_dim % 2 or rotary_emb_dim > head_dim:
        return (
            f"rotary_emb_dim={rotary_emb_dim} must be even and at most head_dim={head_dim} "
            "(0: no rotary embedding)"
        )
    if mlp_dim < 0:
        return f"mlp_dim={mlp_dim} must be >= 0 (0: no MLP inside the attention layer)"
    return None
