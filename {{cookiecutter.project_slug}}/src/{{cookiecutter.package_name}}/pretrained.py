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

What each format's config.json says and what its weights are called, translated to ours and
back, is `formats`; this module finds the files, reads the weights and writes an export.

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
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from . import formats
from .backbone import MUP, AttnConfig, BackboneConfig
from .hub import hub_file, looks_like_path

FORMATS = ("mamba_ssm", "hf")
# in order of preference; an index lists the shards of a large checkpoint
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


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
        if self.format in formats.HYBRID_LAYOUTS:
            state = formats.from_hybrid_names(state, self.format)
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
        format, parsed = formats.interpret(_read_json(config_path, name_or_path), name_or_path)
    else:
        config_path = hub_file(name_or_path, "config.json", revision)
        format, parsed = formats.interpret(_read_json(config_path, name_or_path), name_or_path)
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
    mup = [f"backbone.{n}={getattr(config, n)}" for n in MUP if getattr(config, n) != 1]
    family = None  # HF's hybrid class: Bamba where it can say the model, else Granite 4.0
    if format == "hf" and (config.attn_layer_idx or config.d_intermediate or mup):
        problems = {"bamba": formats.not_bamba(config), "granite": formats.not_granite(config)}
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
        description = formats.mamba_ssm_config(config, model.vocab_size, model.tie_embeddings)
    else:
        from safetensors.torch import save_file

        vocab = model.vocab_size
        state["backbone.embeddings.weight"] = state.pop("backbone.embedding.weight")[:vocab]
        if "lm_head.weight" in state:
            state["lm_head.weight"] = state["lm_head.weight"][:vocab]
        if family:
            state = formats.to_hybrid_names(state, config, family)
        state = {k: v.clone() for k, v in state.items()}  # cut rows must not share storage
        save_file(state, out / "model.safetensors", metadata={"format": "pt"})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(out / "model.safetensors", 0o666 & ~umask)  # safetensors writes it 0600
        if family:
            mlp = model.backbone.layers[0].mlp.fc2.in_features  # d_intermediate rounded up
            description = formats.hybrid_config(config, vocab, model.tie_embeddings, mlp, family)
        else:
            description = formats.hf_config(config, vocab, model.tie_embeddings)
    (out / "config.json").write_text(json.dumps(description, indent=2) + "\n")
    return out
