"""Each checkpoint format's config and names, translated to ours and back.

`pretrained` locates, reads and writes checkpoint folders; this module knows what their
config.json files say and what their weights are called:

    mamba_ssm  mamba-ssm's MambaLMHeadModel: our names; ssm_cfg, attn_layer_idx, attn_cfg
    hf         HF transformers' MambaForCausalLM and Mamba2ForCausalLM
    bamba      HF's BambaForCausalLM (Mamba2 and attention layers, an MLP after each)
    granite    HF's dense GraniteMoeHybridForCausalLM (Bamba's layers with muP multipliers)

`interpret` turns a config.json into ours (or one line saying what this backbone cannot
build); `not_bamba` / `not_granite` say what an HF hybrid config cannot hold; the `*_config`
functions write config.json for an export.
"""

import math
import re
from dataclasses import fields

import torch
from torch import Tensor

from .backbone import MUP, AttnConfig, BackboneConfig

# mamba-ssm's module defaults, which its config.json leaves out (state-spaces/mamba-130m's
# ssm_cfg is {}), and HF's config defaults, which a saved config.json may leave out
MAMBA_SSM_DEFAULTS = {
    "Mamba1": {"d_state": 16, "d_conv": 4, "expand": 2},
    "Mamba2": {"d_state": 128, "d_conv": 4, "expand": 2, "headdim": 64, "ngroups": 1},
    "Mamba3": {
        "d_state": 128,
        "expand": 2,
        "headdim": 64,
        "ngroups": 1,
        "rope_fraction": 0.5,
        "is_mimo": False,
        "mimo_rank": 4,
        "is_outproj_norm": False,
    },
}
HF_DEFAULTS = {
    "mamba": {"state_size": 16, "conv_kernel": 4, "expand": 2, "tie_word_embeddings": True},
    "mamba2": {
        "state_size": 128,
        "conv_kernel": 4,
        "expand": 2,
        "n_groups": 8,
        "head_dim": 64,
        "tie_word_embeddings": False,
    },
}
# ssm_cfg entries that only shape the initialisation or pick a kernel: the weights decide
INIT_ONLY = {
    "dt_min", "dt_max", "dt_init", "dt_scale", "dt_init_floor", "A_init_range", "conv_init",
    "use_fast_path", "use_mem_eff_path", "dropout",
}  # fmt: skip
# ssm_cfg entries that change the computation: our twins follow mamba-ssm's default only
COMPUTE = {
    "dt_rank": "auto",
    "bias": False,
    "conv_bias": True,
    "D_has_hdim": False,
    "rmsnorm": True,
    "norm_before_gate": False,
    "d_ssm": None,
    "dt_limit": (0.0, math.inf),
    "A_floor": 1e-4,  # Mamba3
}


# HF hybrid families this backbone does not build, and the feature that stands in the way
OTHER_HYBRIDS = {
    "falcon_h1": "attention and Mamba side by side in every layer (parallel hybrid)",
    "zamba2": "attention blocks shared by several layers",
    "nemotron_h": "MLP layers of their own with a squared-ReLU activation",
    "jamba": "mixture-of-experts MLPs and Mamba1 layers with inner norms",
}


def interpret(config: dict, source: str) -> tuple[str, tuple]:
    """The checkpoint's format and its config as ours (see Checkpoint), or a one-line refusal."""
    kind = config.get("model_type")
    if kind == "bamba":
        return "bamba", _from_bamba(config, source)
    if kind == "granitemoehybrid":
        experts = config.get("num_local_experts", 8)  # transformers' default
        if experts:
            raise ValueError(
                f"{source}: a GraniteMoeHybrid checkpoint with mixture-of-experts MLPs "
                f"(num_local_experts={experts}) is not supported; the dense ones (0) are"
            )
        return "granite", _from_granite(config, source)
    if kind in OTHER_HYBRIDS:
        raise ValueError(f"{source}: a {kind} checkpoint has {OTHER_HYBRIDS[kind]}; not supported")
    if kind is not None:
        return "hf", _from_hf(config, source)
    if "d_model" in config and "n_layer" in config:
        return "mamba_ssm", _from_mamba_ssm(config, source)
    raise ValueError(
        f"{source}: config.json is neither mamba-ssm's (d_model, n_layer, ...) nor HF "
        "transformers' (model_type mamba, mamba2, bamba or granitemoehybrid); not a Mamba "
        "checkpoint"
    )


def _require(ok: bool, source: str, what: str) -> None:
    if not ok:
        raise ValueError(f"{source}: {what}; this backbone supports mamba-ssm's defaults there")


def _from_mamba_ssm(config: dict, source: str) -> tuple[dict, int, int, bool, int | None]:
    ssm = dict(config.get("ssm_cfg") or {})
    mixer = ssm.pop("layer", "Mamba1")
    _require(mixer in MAMBA_SSM_DEFAULTS, source, f"ssm_cfg.layer={mixer!r} is unknown")
    _require(config.get("rms_norm", True), source, "rms_norm=false (LayerNorm)")
    shape, chunk = {**MAMBA_SSM_DEFAULTS[mixer]}, None
    for key, value in ssm.items():
        if key in shape:
            shape[key] = value
        elif key in COMPUTE:
            auto = value in ("auto", math.ceil(config["d_model"] / 16))
            same = auto if key == "dt_rank" else _same(value, COMPUTE[key])
            _require(same, source, f"ssm_cfg.{key}={value!r}")
        elif key == "chunk_size":
            chunk = value
        else:
            _require(key in INIT_ONLY, source, f"ssm_cfg.{key} is unknown")
    multiple = config.get("pad_vocab_size_multiple", 8)
    attn_layer_idx, attn_cfg = config.get("attn_layer_idx") or [], config.get("attn_cfg") or {}
    if attn_layer_idx:
        known = {f.name for f in fields(AttnConfig)}
        for key in attn_cfg:
            _require(key in known, source, f"attn_cfg.{key} is unknown")
        if not attn_cfg.get("causal", False):  # mamba-ssm's MHA default: both ways
            raise ValueError(
                f"{source}: its attention layers are not causal (attn_cfg.causal is not true), "
                "so each token sees the ones after it; this backbone reads left to right only"
            )
    fixed = {
        "mixer": mixer,
        "d_model": config["d_model"],
        "n_layer": config["n_layer"],
        "d_intermediate": config.get("d_intermediate", 0),
        "residual_in_fp32": config.get("residual_in_fp32", True),
        "norm_epsilon": 1e-5,  # MambaLMHeadModel always builds its norms with 1e-5
        "pad_vocab_size_multiple": multiple,
        "attn_layer_idx": tuple(attn_layer_idx),
        "attn_cfg": AttnConfig(**attn_cfg) if attn_layer_idx else AttnConfig(),
        **shape,
    }
    vocab, tied = config["vocab_size"], config.get("tie_embeddings", True)
    return fixed, vocab, math.ceil(vocab / multiple) * multiple, tied, chunk


def _from_hf(config: dict, source: str) -> tuple[dict, int, int, bool, int | None]:
    kind = config["model_type"]
    _require(kind in HF_DEFAULTS, source, f"model_type={kind!r} is not mamba or mamba2")
    get = lambda key: config.get(key, HF_DEFAULTS[kind].get(key))  # noqa: E731
    d_model = config["hidden_size"]
    _require(config.get("hidden_act", "silu") == "silu", source, "hidden_act is not silu")
    _require(not config.get("use_bias", False), source, "use_bias=true")
    _require(config.get("use_conv_bias", True), source, "use_conv_bias=false")
    fixed = {
        "d_model": d_model,
        "n_layer": config["num_hidden_layers"],
        "d_intermediate": 0,
        "d_state": get("state_size"),
        "d_conv": get("conv_kernel"),
        "expand": get("expand"),
        "residual_in_fp32": config.get("residual_in_fp32", True),
        "norm_epsilon": config.get("layer_norm_epsilon", 1e-5),
        "attn_layer_idx": (),
    }
    chunk = None
    if kind == "mamba":
        rank = config.get("time_step_rank", "auto")
        _require(rank in ("auto", math.ceil(d_model / 16)), source, f"time_step_rank={rank}")
        fixed["mixer"] = "Mamba1"
    else:
        heads, headdim = config.get("num_heads"), get("head_dim")
        _require(
            heads in (None, fixed["expand"] * d_model // headdim)
            and fixed["expand"] * d_model % headdim == 0,
            source,
            f"num_heads={heads} x head_dim={headdim} is not expand x hidden_size",
        )
        limit = config.get("time_step_limit", COMPUTE["dt_limit"])
        _require(_same(limit, COMPUTE["dt_limit"]), source, f"time_step_limit={limit}")
        fixed.update(mixer="Mamba2", headdim=headdim, ngroups=get("n_groups"))
        chunk = config.get("chunk_size")
    tied = get("tie_word_embeddings")
    return fixed, config["vocab_size"], config["vocab_size"], tied, chunk


def _hf_hybrid_fields(config: dict, source: str, eps: float, mlp: int) -> dict:
    """The fields Bamba's and Granite's configs share, as ours: the Mamba2 layers (mamba_*),
    the norms' epsilon and the SwiGLU MLP after every layer (`mlp` wide)."""
    get = config.get
    d_model, heads = config["hidden_size"], get("mamba_n_heads", 128)
    expand = get("mamba_expand", 2)
    headdim = get("mamba_d_head", "auto")
    headdim = expand * d_model // heads if headdim == "auto" else headdim
    _require(headdim * heads == expand * d_model, source, "mamba_n_heads x mamba_d_head is not "
             "mamba_expand x hidden_size")  # fmt: skip
    _require(get("hidden_act", "silu") == "silu", source, "hidden_act is not silu")
    _require(not get("mamba_proj_bias", False), source, "mamba_proj_bias=true")
    _require(get("mamba_conv_bias", True), source, "mamba_conv_bias=false")
    _require(not get("mlp_bias", False), source, "mlp_bias=true")
    limit = get("time_step_limit", COMPUTE["dt_limit"])
    _require(_same(limit, COMPUTE["dt_limit"]), source, f"time_step_limit={limit}")
    _require(mlp % 128 == 0, source, f"its MLP width {mlp} is not a multiple of 128")
    rope = get("rope_parameters") or {}
    _require(rope.get("rope_type", "default") == "default", source, "a scaled RoPE")
    return {
        "mixer": "Mamba2",
        "d_model": d_model,
        "n_layer": config["num_hidden_layers"],
        "d_intermediate": mlp,
        "d_state": get("mamba_d_state", 256),
        "d_conv": get("mamba_d_conv", 4),
        "expand": expand,
        "headdim": headdim,
        "ngroups": get("mamba_n_groups", 1),
        "norm_epsilon": eps,  # every norm, the Mamba2 layers' gated one too
    }


def _hf_attention(config: dict, rotary_share: float, softmax_scale: float | None) -> AttnConfig:
    """Bamba's and Granite's attention layers (q, k, v, o projections, GQA) as mamba-ssm's."""
    get = config.get
    heads = get("num_attention_heads", 32)
    head_dim = get("head_dim") or config["hidden_size"] // heads
    rope = get("rope_parameters") or {}
    return AttnConfig(
        num_heads=heads,
        num_heads_kv=get("num_key_value_heads") or heads,
        head_dim=head_dim,
        qkv_proj_bias=get("attention_bias", False),
        out_proj_bias=get("attention_bias", False),
        softmax_scale=softmax_scale,
        rotary_emb_dim=int(head_dim * rotary_share),
        rotary_emb_base=float(rope.get("rope_theta", get("rope_theta", 10000.0))),
    )


def _from_bamba(config: dict, source: str) -> tuple[dict, int, int, bool, int | None]:
    """BambaConfig's fields as ours: the Mamba2 layers', the attention's, the MLP's."""
    get = config.get
    fixed = _hf_hybrid_fields(
        config, source, get("rms_norm_eps", 1e-5), get("intermediate_size", 14336)
    )
    fixed["attn_layer_idx"] = tuple(get("attn_layer_indices") or ())
    # BambaConfig fixes partial_rotary_factor at 0.5
    fixed["attn_cfg"] = _hf_attention(config, rotary_share=0.5, softmax_scale=None)
    vocab, tied = config["vocab_size"], get("tie_word_embeddings", False)
    return fixed, vocab, vocab, tied, get("mamba_chunk_size", 256)


GRANITE_KINDS = {"mamba": False, "linear_attention": False, "attention": True,
                 "full_attention": True}  # fmt: skip


def _from_granite(config: dict, source: str) -> tuple[dict, int, int, bool, int | None]:
    """A dense GraniteMoeHybridConfig (IBM's Granite 4.0 hybrids) as ours: Bamba's layers with
    muP multipliers, `layer_types` naming the attention layers, RoPE over whole heads or none."""
    get = config.get
    fixed = _hf_hybrid_fields(
        config, source, get("rms_norm_eps", 1e-6), get("shared_intermediate_size", 1024)
    )
    kinds = get("layer_types") or get("layers_block_type") or ["mamba"] * fixed["n_layer"]
    unknown = sorted(set(kinds) - set(GRANITE_KINDS))
    _require(not unknown, source, f"layer_types has {unknown}")
    _require(len(kinds) == fixed["n_layer"], source, "layer_types is not one per layer")
    fixed["attn_layer_idx"] = tuple(i for i, kind in enumerate(kinds) if GRANITE_KINDS[kind])
    rope = get("position_embedding_type")
    _require(rope in (None, "nope", "rope"), source, f"position_embedding_type={rope!r}")
    heads = get("num_attention_heads", 32)
    _require(get("head_dim") in (None, config["hidden_size"] // heads), source,
             "head_dim is not hidden_size / num_attention_heads")  # fmt: skip
    fixed["attn_cfg"] = _hf_attention(
        config, rotary_share=1.0 if rope == "rope" else 0.0,
        softmax_scale=float(get("attention_multiplier", 1.0)),
    )  # fmt: skip
    fixed |= {name: float(get(name, 1.0)) for name in MUP}  # Granite's names are ours
    vocab, tied = config["vocab_size"], get("tie_word_embeddings", False)
    return fixed, vocab, vocab, tied, get("mamba_chunk_size", 256)


# Where Bamba and Granite keep what they share with us: the final norm, each layer's second norm
# and its MLP (input side and output side). Everything else has the same names in both.
HYBRID_LAYOUTS = {
    "bamba": {
        "final_norm": "model.final_layernorm.",
        "norm2": "pre_ff_layernorm.",
        "mlp_in": ("feed_forward.up_proj.", "feed_forward.gate_proj."),  # two matrices
        "mlp_out": "feed_forward.down_proj.",
    },
    "granite": {
        "final_norm": "model.norm.",
        "norm2": "post_attention_layernorm.",
        "mlp_in": "shared_mlp.input_linear.",  # one matrix: [gate; up]
        "mlp_out": "shared_mlp.output_linear.",
    },
}


def _hf_hybrid_names(family: str) -> list[tuple[str, str]]:
    """(pattern, our name) for one family's keys; q, k and v are concatenated afterwards."""
    layout, layer = HYBRID_LAYOUTS[family], r"model\.layers\.(\d+)\."
    names = [
        (r"model\.embed_tokens\.", "backbone.embedding."),
        (re.escape(layout["final_norm"]), "backbone.norm_f."),
        (layer + r"input_layernorm\.", r"backbone.layers.\1.norm."),
        (layer + re.escape(layout["norm2"]), r"backbone.layers.\1.norm2."),
        (layer + r"mamba\.", r"backbone.layers.\1.mixer."),
        (layer + r"self_attn\.o_proj\.", r"backbone.layers.\1.mixer.out_proj."),
        (layer + r"self_attn\.([qkv])_proj\.", r"backbone.layers.\1.mixer.in_proj.\2."),
        (layer + re.escape(layout["mlp_out"]), r"backbone.layers.\1.mlp.fc2."),
    ]
    if isinstance(layout["mlp_in"], tuple):  # up and gate apart
        for part, prefix in zip(("up", "gate"), layout["mlp_in"], strict=True):
            names.append((layer + re.escape(prefix), rf"backbone.layers.\1.mlp.fc1.{part}."))
    else:
        names.append((layer + re.escape(layout["mlp_in"]), r"backbone.layers.\1.mlp.fc1."))
    return names


def from_hybrid_names(state: dict[str, Tensor], family: str) -> dict[str, Tensor]:
    """A Bamba or Granite state_dict under our names. MHA's in_proj is [q; k; v]; GatedMLP's
    fc1 is [up; gate], as it computes fc2(up * silu(gate)): Bamba's up_proj and gate_proj
    stacked, Granite's input_linear ([gate; up]) with its halves swapped."""
    layout, names = HYBRID_LAYOUTS[family], _hf_hybrid_names(family)
    renamed = {}
    for key, value in state.items():
        for pattern, name in names:
            if re.match(pattern, key):
                key = re.sub(pattern, name, key, count=1)
                break
        renamed[key] = value
    for key in [k for k in renamed if k.endswith((".q.weight", ".q.bias", ".up.weight"))]:
        stem, part, kind = key.rsplit(".", 2)
        prefix = stem + "."
        parts = ("q", "k", "v") if part == "q" else ("up", "gate")
        renamed[prefix + kind] = torch.cat([renamed.pop(f"{prefix}{p}.{kind}") for p in parts])
    if not isinstance(layout["mlp_in"], tuple):
        for key in [k for k in renamed if k.endswith(".mlp.fc1.weight")]:
            gate, up = renamed[key].chunk(2)
            renamed[key] = torch.cat([up, gate])
    return renamed


def not_bamba(config: BackboneConfig) -> str | None:
    """What in a model with attention or an MLP Bamba's config cannot say, if anything."""
    attn = config.attn_cfg
    head_dim, _ = attn.sizes(config.d_model)
    checks = [
        *_not_hf_hybrid(config),
        (not config.attn_layer_idx or (
            attn.rotary_emb_dim == head_dim // 2 and not attn.rotary_emb_interleaved),
         f"attn_cfg.rotary_emb_dim={attn.rotary_emb_dim} (Bamba turns half of each head: "
         f"{head_dim // 2}, in halves)"),
        (not config.attn_layer_idx or attn.softmax_scale is None,
         f"attn_cfg.softmax_scale={attn.softmax_scale}"),
        *((getattr(config, name) == 1, f"backbone.{name}={getattr(config, name)} (muP)")
          for name in MUP),
    ]  # fmt: skip
    return next((problem for ok, problem in checks if not ok), None)


def not_granite(config: BackboneConfig) -> str | None:
    """What in a model with attention or an MLP a dense Granite config cannot say, if anything."""
    attn = config.attn_cfg
    head_dim, _ = attn.sizes(config.d_model)
    checks = [
        *_not_hf_hybrid(config),
        (not config.attn_layer_idx or (
            attn.rotary_emb_dim in (0, head_dim) and not attn.rotary_emb_interleaved),
         f"attn_cfg.rotary_emb_dim={attn.rotary_emb_dim} (Granite turns whole heads, "
         f"{head_dim}, in halves, or none)"),
        (not config.attn_layer_idx or head_dim * attn.num_heads == config.d_model,
         f"attn_cfg.head_dim={head_dim} (Granite's heads split d_model={config.d_model})"),
    ]  # fmt: skip
    return next((problem for ok, problem in checks if not ok), None)


def _not_hf_hybrid(config: BackboneConfig) -> list[tuple[bool, str]]:
    """The checks Bamba and Granite share: Mamba2 layers, an MLP after each, plain attention."""
    attn = config.attn_cfg
    return [
        (config.mixer == "Mamba2", f"backbone.mixer={config.mixer} (their layers are Mamba2)"),
        (config.d_intermediate > 0, "backbone.d_intermediate=0 (they have an MLP in each layer)"),
        (not config.attn_layer_idx or attn.d_conv == 0, f"attn_cfg.d_conv={attn.d_conv}"),
        (not config.attn_layer_idx or attn.mlp_dim == 0, f"attn_cfg.mlp_dim={attn.mlp_dim}"),
        (not config.attn_layer_idx or attn.qkv_proj_bias == attn.out_proj_bias,
         "attn_cfg.qkv_proj_bias differs from out_proj_bias"),
    ]  # fmt: skip


def to_hybrid_names(
    state: dict[str, Tensor], config: BackboneConfig, family: str
) -> dict[str, Tensor]:
    """Our HF-named state (backbone.embeddings, ...) under Bamba's or Granite's names: MHA's
    in_proj split into q, k and v, GatedMLP's fc1 into the family's MLP input."""
    layout = HYBRID_LAYOUTS[family]
    attn = config.attn_cfg
    head_dim, heads_kv = attn.sizes(config.d_model)
    q, kv = attn.num_heads * head_dim, heads_kv * head_dim
    out = {}
    for key, value in state.items():
        if key == "backbone.embeddings.weight":
            out["model.embed_tokens.weight"] = value
        elif key.startswith("backbone.norm_f."):
            out[key.replace("backbone.norm_f.", layout["final_norm"])] = value
        elif key == "lm_head.weight":
            out[key] = value
        else:
            layer, part, rest = re.fullmatch(r"backbone\.layers\.(\d+)\.(\w+)\.(.*)", key).groups()
            base = f"model.layers.{layer}."
            if part in ("norm", "norm2"):
                norm = "input_layernorm." if part == "norm" else layout["norm2"]
                out[base + norm + rest] = value
            elif part == "mlp" and rest.startswith("fc1."):
                up, gate = value.chunk(2)
                if isinstance(layout["mlp_in"], tuple):
                    out[base + layout["mlp_in"][0] + rest[4:]] = up
                    out[base + layout["mlp_in"][1] + rest[4:]] = gate
                else:
                    out[base + layout["mlp_in"] + rest[4:]] = torch.cat([gate, up])
            elif part == "mlp":
                out[base + layout["mlp_out"] + rest[4:]] = value
            elif int(layer) not in config.attn_layer_idx:
                out[base + "mamba." + rest] = value
            elif rest.startswith("in_proj."):
                kind = rest[len("in_proj.") :]
                for name, piece in zip("qkv", value.split([q, kv, kv]), strict=True):
                    out[f"{base}self_attn.{name}_proj.{kind}"] = piece
            else:
                out[base + "self_attn.o_proj." + rest[len("out_proj.") :]] = value
    return out


def hybrid_config(
    config: BackboneConfig, vocab_size: int, tied: bool, mlp: int, family: str
) -> dict:
    """config.json of a BambaForCausalLM or a dense GraniteMoeHybridForCausalLM."""
    attn = config.attn_cfg
    head_dim, heads_kv = attn.sizes(config.d_model)
    common = {
        "vocab_size": vocab_size,
        "tie_word_embeddings": tied,
        "hidden_size": config.d_model,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": attn.num_heads,
        "num_key_value_heads": heads_kv,
        "attention_bias": attn.qkv_proj_bias,
        "rope_parameters": {"rope_type": "default", "rope_theta": attn.rotary_emb_base},
        "mamba_n_heads": config.expand * config.d_model // config.headdim,
        "mamba_d_head": config.headdim,
        "mamba_n_groups": config.ngroups,
        "mamba_d_state": config.d_state,
        "mamba_d_conv": config.d_conv,
        "mamba_expand": config.expand,
        "mamba_chunk_size": config.chunk,
        "mamba_conv_bias": True,
        "mamba_proj_bias": False,
        "hidden_act": "silu",
        "rms_norm_eps": config.norm_epsilon,
    }
    if family == "bamba":
        return {
            "architectures": ["BambaForCausalLM"],
            "model_type": "bamba",
            **common,
            "intermediate_size": mlp,  # GatedMLP's width: d_intermediate rounded up
            "attn_layer_indices": list(config.attn_layer_idx),
            "head_dim": head_dim,
            "mlp_bias": False,
        }
    attention = set(config.attn_layer_idx)
    return {
        "architectures": ["GraniteMoeHybridForCausalLM"],
        "model_type": "granitemoehybrid",
        **common,
        "layer_types": ["attention" if i in attention else "mamba" for i in range(config.n_layer)],
        "position_embedding_type": "rope" if attn.rotary_emb_dim else None,
        "attention_multiplier": attn.softmax_scale or head_dim**-0.5,
        **{name: getattr(config, name) for name in MUP},
        "num_local_experts": 0,
        "shared_intermediate_size": mlp,
        "intermediate_size": mlp,
    }


def _same(value, default) -> bool:
    if isinstance(default, tuple):
        return value is not None and tuple(map(_float, value)) == default
    return value == default


def _float(value):
    """transformers 5 writes infinity into config.json as {"__float__": "Infinity"}."""
    return float(value["__float__"]) if isinstance(value, dict) else value


def mamba_ssm_config(config: BackboneConfig, vocab_size: int, tied: bool) -> dict:
    ssm_cfg = config.ssm_cfg()
    return {
        "d_model": config.d_model,
        "d_intermediate": config.d_intermediate,
        "n_layer": config.n_layer,
        "vocab_size": vocab_size,
        "ssm_cfg": ssm_cfg,
        "attn_layer_idx": list(config.attn_layer_idx),
        "attn_cfg": config.attn_cfg.kwargs() if config.attn_layer_idx else {},
        "rms_norm": True,
        "residual_in_fp32": config.residual_in_fp32,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": config.pad_vocab_size_multiple,
        "tie_embeddings": tied,
    }


def hf_config(config: BackboneConfig, vocab_size: int, tied: bool) -> dict:
    common = {
        "hidden_size": config.d_model,
        "num_hidden_layers": config.n_layer,
        "vocab_size": vocab_size,
        "state_size": config.d_state,
        "conv_kernel": config.d_conv,
        "expand": config.expand,
        "layer_norm_epsilon": config.norm_epsilon,
        "residual_in_fp32": config.residual_in_fp32,
        "use_bias": False,
        "use_conv_bias": True,
        "hidden_act": "silu",
        "time_step_rank": math.ceil(config.d_model / 16),
        "tie_word_embeddings": tied,
    }
    if config.mixer == "Mamba1":
        return {
            "architectures": ["MambaForCausalLM"],
            "model_type": "mamba",
            **common,
            "intermediate_size": config.expand * config.d_model,
        }
    return {
        "architectures": ["Mamba2ForCausalLM"],
        "model_type": "mamba2",
        **common,
        "num_heads": config.expand * config.d_model // config.headdim,
        "head_dim": config.headdim,
        "n_groups": config.ngroups,
        "chunk_size": config.chunk,
    }
