"""Pretrained weights in and out, in mamba-ssm's folder format and in HF transformers'.

The published Mamba checkpoints come in two layouts, and both load into our backbone:

    mamba_ssm  config.json {d_model, n_layer, vocab_size, ssm_cfg, pad_vocab_size_multiple, ...}
               + pytorch_model.bin; state_spaces/mamba-130m ... mamba2-2.7b, and the hybrids
               (mamba2attn-2.7b: attention at the layers attn_layer_idx, shaped by attn_cfg,
               MHA's arguments). Its keys are ours
               (`backbone.layers.0.mixer.in_proj.weight`, ...) because our MambaLM mirrors
               mamba-ssm's MambaLMHeadModel, plus `lm_head.weight`: the embedding again when
               `tie_embeddings` is true (the published models), its own head when false.
    hf         config.json {model_type: mamba | mamba2, hidden_size, ...} + model.safetensors
               or pytorch_model.bin, either possibly sharded with an index; the `-hf` repos.
               The same names, but `backbone.embeddings` for our `backbone.embedding`; an
               `lm_head.weight` of its own when `tie_word_embeddings` is false (HF's Mamba2
               default), none when it is tied.
    bamba      HF's hybrid (model_type bamba, ibm-fms/Bamba-9B): Mamba2 layers and attention at
               `attn_layer_indices`, a SwiGLU MLP after every layer, RoPE on half of each head.
               Its names are mapped to ours (`model.layers.3.self_attn.q_proj`, `k_proj`,
               `v_proj` -> `backbone.layers.3.mixer.in_proj`; `feed_forward.up_proj`,
               `gate_proj` -> `mlp.fc1`; ...), and back on export.
    granite    HF's dense GraniteMoeHybrid (model_type granitemoehybrid, IBM's Granite 4.0 H
               models without experts): Bamba's layers under `layer_types`, the MLP as one
               `shared_mlp.input_linear`, RoPE over whole heads or none, and muP multipliers
               (backbone.embedding_multiplier, residual_multiplier, logits_scaling; the
               attention's is its softmax_scale). Mixture-of-experts checkpoints are refused.

A name is a local folder when one exists under that name, else a hub id: huggingface_hub fetches
the files into its cache (under HF_HOME; on Modal a Volume, so containers fetch them once),
honours a `revision` pin, and with HF_HUB_OFFLINE=1 reads only what is cached.

The checkpoint's config fixes the backbone's shape. A field the config leaves out takes the
checkpoint's value; a field it gives must agree with it, because a disagreeing value is a mistake
either in the config or in the choice of checkpoint, not a request to reshape the weights. The
command line knows which fields were given (`refuse_contradictions`); MambaLM built in Python
knows only the fields that differ from BackboneConfig's defaults.
"""

import json
import math
import os
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
from torch import Tensor

from .backbone import AttnConfig, BackboneConfig
from .hub import hub_file, looks_like_path

FORMATS = ("mamba_ssm", "hf")
# in order of preference; an index lists the shards of a large checkpoint
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)

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


def _read_json(path: Path, source: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        message = str(err)
    raise ValueError(f"{source}: {path.name} is not valid JSON ({message})")


@dataclass
class Checkpoint:
    """A pretrained checkpoint located and its config read; the weights are read on demand."""

    source: str  # what the user named, for messages
    format: str  # mamba_ssm | hf | bamba | granite
    fixed: dict  # the BackboneConfig fields its weights fix
    vocab_size: int  # the vocabulary its config states
    rows: int  # the rows of its embedding (vocab_size padded, in mamba-ssm's format)
    tied: bool  # whether the output head is the embedding
    chunk_size: int | None  # Mamba2's SSD chunk length, if it names one: taken unless set
    weights: list[Path]

    def refuse_contradictions(self, backbone: dict, tie_embeddings: bool | None = None) -> None:
        """Every given backbone field the weights fix, and a given tie_embeddings, must agree
        with the checkpoint's config."""
        for name, mine in backbone.items():
            if name not in self.fixed:
                continue
            value = self.fixed[name]
            if isinstance(value, AttnConfig):  # entry by entry: a config may give a few
                theirs = asdict(value)
                for key, entry in dict(mine).items():
                    if theirs.get(key) != entry:
                        self._contradiction(f"{name}.{key}", entry, theirs.get(key))
            elif (tuple(mine) if isinstance(mine, list) else mine) != value:
                self._contradiction(name, mine, value)
        if tie_embeddings is not None and tie_embeddings != self.tied:
            head = "is its embedding" if self.tied else "is a matrix of its own"
            raise ValueError(
                f"tie_embeddings={tie_embeddings} contradicts {self.source}, whose output head "
                f"{head}; leave tie_embeddings out of the config (it comes from the checkpoint)"
            )

    def _contradiction(self, name: str, mine, value):
        raise ValueError(
            f"model.net.backbone.{name}={mine!r} contradicts {self.source}, whose config gives "
            f"{name}={value!r}; leave backbone.{name} out of the config (it comes from the "
            f"checkpoint) or set it to {value!r}"
        )

    def configure(self, given: BackboneConfig, vocab_size: int | None, tie_embeddings: bool):
        """The backbone config, vocabulary size and head tying for a model initialised here;
        fields at BackboneConfig's defaults count as not given."""
        default = BackboneConfig()
        self.refuse_contradictions(
            {n: getattr(given, n) for n in self.fixed if getattr(given, n) != getattr(default, n)},
            None if tie_embeddings else False,  # True is the default: it follows the checkpoint
        )
        config = replace(given, **self.fixed)
        if self.chunk_size is not None and given.chunk_size == default.chunk_size:
            config = replace(config, chunk_size=self.chunk_size)
        if vocab_size is None:
            return config, self.vocab_size, self.tied
        if vocab_size > self.rows:
            raise ValueError(
                f"model.net.vocab_size={vocab_size} (the data's tokenizer) is larger than the "
                f"{self.rows} token embeddings of {self.source}; ids from {self.rows} on would "
                "have none. Use the checkpoint's own tokenizer (data.tokenizer=...)"
            )
        multiple = config.pad_vocab_size_multiple
        if math.ceil(vocab_size / multiple) * multiple < self.vocab_size:
            raise ValueError(
                f"model.net.vocab_size={vocab_size} (the data's tokenizer) is smaller than the "
                f"{self.vocab_size} tokens of {self.source}: its token ids would not mean what "
                "the checkpoint learnt. Use the checkpoint's own tokenizer (data.tokenizer=..., "
                "e.g. EleutherAI/gpt-neox-20b for the state-spaces models)"
            )
        return config, vocab_size, self.tied

    def state_dict(self) -> dict[str, Tensor]:
        """The weights under our MambaLM's names (`lm_head.weight` only when untied)."""
        state = {}
        for path in self.weights:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                state.update(load_file(path))
            else:
                state.update(torch.load(path, map_location="cpu", weights_only=True))
        if self.format in HYBRID_LAYOUTS:
            state = _from_hf_hybrid_names(state, self.format)
        embedding = (
            "backbone.embeddings.weight" if self.format == "hf" else "backbone.embedding.weight"
        )
        if embedding not in state:
            raise ValueError(f"{self.source}: the weights have no {embedding}; not a Mamba LM")
        head = state.pop("lm_head.weight", None)
        if self.tied and head is not None and not torch.equal(head, state[embedding]):
            raise ValueError(
                f"{self.source}: lm_head.weight differs from the embedding, but its config ties "
                "them; set tie_embeddings (mamba-ssm) or tie_word_embeddings (HF) to false there"
            )
        if not self.tied:
            if head is None:
                raise ValueError(
                    f"{self.source}: its config unties the output head from the embedding, but "
                    "the weights have no lm_head.weight; not a complete checkpoint"
                )
            state["lm_head.weight"] = head
        state["backbone.embedding.weight"] = state.pop(embedding)
        return state

    def load_into(self, model: torch.nn.Module) -> None:
        """Copy the weights into a MambaLM; the vocabulary rows as far as both have them.

        The rows past the vocabulary are padding that no loss or logit ever reads: a model
        with more of them keeps its fresh ones, a model with fewer leaves the extra ones out.
        """
        state = self.state_dict()
        ours = model.state_dict()
        rowed = ("backbone.embedding.weight", "lm_head.weight")  # (vocabulary rows, d_model)
        wrong = [
            f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
            for k, v in ours.items()
            if k not in rowed and k in state and state[k].shape != v.shape
        ]
        missing = sorted(set(ours) - set(state))
        unexpected = sorted(set(state) - set(ours))
        if wrong or missing or unexpected:
            raise ValueError(
                f"{self.source}: the weights do not match the model its config describes "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]}, other shapes {wrong[:3]})"
            )
        with torch.no_grad():
            for name in rowed:
                if name in state:
                    rows = min(len(state[name]), len(ours[name]))
                    ours[name][:rows] = state.pop(name)[:rows]
                    state[name] = ours[name]
        model.load_state_dict(state, strict=True)


def read_checkpoint(name_or_path: str, revision: str | None = None) -> Checkpoint:
    """Locate a checkpoint (local folder or hub id) and read its config. A config this backbone
    cannot express is refused before any weights are located (on the hub: downloaded)."""
    local = Path(name_or_path).expanduser()
    if local.exists() or looks_like_path(name_or_path):
        if not local.is_dir():
            raise FileNotFoundError(
                f"init_from={name_or_path!r}: no such folder; give a checkpoint folder "
                "(config.json + weights) or a hub id such as state-spaces/mamba-130m"
            )
        if revision is not None:
            raise ValueError(
                f"init_revision={revision!r} applies to hub ids; {name_or_path} is a local folder"
            )
        config_path = local / "config.json"
        weights = [local / name for name in WEIGHT_FILES if (local / name).is_file()][:1]
        if not config_path.is_file() or not weights:
            raise FileNotFoundError(
                f"init_from={name_or_path!r} is not a checkpoint folder: it needs config.json "
                f"and one of {', '.join(WEIGHT_FILES)}"
            )
        shard = lambda name: local / name  # noqa: E731
        format, parsed = _interpret(_read_json(config_path, name_or_path), name_or_path)
    else:
        config_path = hub_file(name_or_path, "config.json", revision)
        format, parsed = _interpret(_read_json(config_path, name_or_path), name_or_path)
        weights = []
        for name in WEIGHT_FILES:
            found = hub_file(name_or_path, name, revision, required=False)
            if found is not None:
                weights = [found]
                break
        if not weights:
            raise FileNotFoundError(
                f"{name_or_path}: config.json is there but none of {', '.join(WEIGHT_FILES)} "
                "(offline: only what was cached can be read); not a checkpoint this loader reads"
            )
        shard = lambda name: hub_file(name_or_path, name, revision)  # noqa: E731
    if weights[0].name.endswith(".index.json"):
        shards = sorted(set(_read_json(weights[0], name_or_path)["weight_map"].values()))
        weights = [shard(name) for name in shards]
    return Checkpoint(name_or_path, format, *parsed, weights)


# HF hybrid families this backbone does not build, and the feature that stands in the way
OTHER_HYBRIDS = {
    "falcon_h1": "attention and Mamba side by side in every layer (parallel hybrid)",
    "zamba2": "attention blocks shared by several layers",
    "nemotron_h": "MLP layers of their own with a squared-ReLU activation",
    "jamba": "mixture-of-experts MLPs and Mamba1 layers with inner norms",
}


def _interpret(config: dict, source: str) -> tuple[str, tuple]:
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
    fixed |= {
        "embedding_multiplier": float(get("embedding_multiplier", 1.0)),
        "residual_multiplier": float(get("residual_multiplier", 1.0)),
        "logits_scaling": float(get("logits_scaling", 1.0)),
    }
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


def _from_hf_hybrid_names(state: dict[str, Tensor], family: str) -> dict[str, Tensor]:
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


def _not_bamba(config: BackboneConfig) -> str | None:
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
          for name in ("embedding_multiplier", "residual_multiplier", "logits_scaling")),
    ]  # fmt: skip
    return next((problem for ok, problem in checks if not ok), None)


def _not_granite(config: BackboneConfig) -> str | None:
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


def _to_hf_hybrid_names(
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


MUP = ("embedding_multiplier", "residual_multiplier", "logits_scaling")


def _hf_hybrid_config(
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


def save(model, directory: str | Path, format: str = "mamba_ssm") -> Path:
    """Write a MambaLM as a checkpoint folder in mamba-ssm's or HF's format.

    mamba_ssm: loads with `MambaLMHeadModel.from_pretrained(dir)` (the embedding keeps its
    padded rows, as mamba-ssm builds it). hf: loads with `MambaForCausalLM` or
    `Mamba2ForCausalLM.from_pretrained(dir)`, a hybrid (attention or MLPs) with
    `BambaForCausalLM` or, where Bamba cannot say it (muP multipliers, RoPE over whole heads or
    none), `GraniteMoeHybridForCausalLM`; the vocabulary rows are cut to the true vocabulary,
    so HF's logits cover real tokens only. Everything is checked before anything is written.
    """
    config: BackboneConfig = model.backbone.config
    if format == "hf" and config.mixer == "Mamba3":
        raise ValueError(
            "backbone.mixer=Mamba3: HF transformers has no Mamba-3 model; export this model "
            "with format=mamba_ssm"
        )
    mup = [f"backbone.{name}={getattr(config, name)}" for name in MUP if getattr(config, name) != 1]
    family = None  # HF's hybrid class: Bamba where it can say the model, else Granite 4.0
    if format == "hf" and (config.attn_layer_idx or config.d_intermediate or mup):
        problems = {"bamba": _not_bamba(config), "granite": _not_granite(config)}
        family = next((name for name, problem in problems.items() if problem is None), None)
        if family is None:
            raise ValueError(
                f"{problems['bamba']} for Bamba, {problems['granite']} for Granite: HF's Mamba "
                "models have neither attention nor an MLP, and its hybrids cannot express this "
                "model; export it with format=mamba_ssm"
            )
    if format == "mamba_ssm" and config.norm_epsilon != 1e-5:
        raise ValueError(
            f"backbone.norm_epsilon={config.norm_epsilon}: mamba-ssm's config cannot express it "
            "(its norms always use 1e-5); export this model with format=hf"
        )
    if format == "mamba_ssm" and mup:
        raise ValueError(
            f"{mup[0]}: mamba-ssm's config has no muP multipliers; export this model with "
            "format=hf (as a Granite 4.0 hybrid)"
        )
    out = Path(directory)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    out.mkdir(parents=True, exist_ok=True)
    if format == "mamba_ssm":
        # tied: lm_head.weight is the embedding again, as MambaLMHeadModel saves it
        state.setdefault("lm_head.weight", state["backbone.embedding.weight"])
        torch.save(state, out / "pytorch_model.bin")
        description = _mamba_ssm_config(config, model.vocab_size, model.tie_embeddings)
    else:
        from safetensors.torch import save_file

        vocab = model.vocab_size
        state["backbone.embeddings.weight"] = state.pop("backbone.embedding.weight")[:vocab]
        if "lm_head.weight" in state:
            state["lm_head.weight"] = state["lm_head.weight"][:vocab]
        if family:
            state = _to_hf_hybrid_names(state, config, family)
        state = {k: v.clone() for k, v in state.items()}  # cut rows must not share storage
        save_file(state, out / "model.safetensors", metadata={"format": "pt"})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(out / "model.safetensors", 0o666 & ~umask)  # safetensors writes it 0600
        if family:
            mlp = state[f"model.layers.0.{HYBRID_LAYOUTS[family]['mlp_out']}weight"].shape[1]
            description = _hf_hybrid_config(config, vocab, model.tie_embeddings, mlp, family)
        else:
            description = _hf_config(config, vocab, model.tie_embeddings)
    (out / "config.json").write_text(json.dumps(description, indent=2) + "\n")
    return out


def _mamba_ssm_config(config: BackboneConfig, vocab_size: int, tied: bool) -> dict:
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


def _hf_config(config: BackboneConfig, vocab_size: int, tied: bool) -> dict:
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
