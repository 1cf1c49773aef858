"""Hybrid models: attention layers (mixers.MHA) among the Mamba layers, as mamba-ssm builds them.

The attention layer is checked against mamba-ssm's MHA parameter table and a naive attention
written out here; decoding against the full forward; the mamba-ssm folder format against
config.json's layout of state-spaces/mamba2attn-2.7b.
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from {{ cookiecutter.package_name }}.backbone import BackboneConfig, InferenceParams
from {{ cookiecutter.package_name }}.generation import Sampling, decoder
from {{ cookiecutter.package_name }}.mixers import MHA
from {{ cookiecutter.package_name }}.model import MambaLM

PACKAGE = "{{ cookiecutter.package_name }}"
TINY = {"d_model": 32, "n_layer": 3, "d_state": 8, "headdim": 8, "chunk_size": 8}
ATTN = {"num_heads": 4, "num_heads_kv": 2, "rotary_emb_dim": 4, "d_conv": 4, "mlp_dim": 10}


def hybrid_lm(mixer: str, vocab_size: int = 64, seed: int = 0, **attn) -> MambaLM:
    torch.manual_seed(seed)
    config = BackboneConfig(
        impl="reference", mixer=mixer, attn_layer_idx=[1], attn_cfg={**ATTN, **attn}, **TINY
    )
    return MambaLM(config, vocab_size).eval()


# ------------------------------------------------------------------------- the layer


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        # qkv: head_dim 8 x (4 + 2 x 2) = 64; mlp_dim 10 rounds up to 256, half of it out
        (
            {"num_heads": 4, "num_heads_kv": 2, "mlp_dim": 10, "d_conv": 4},
            {
                "in_proj.weight": (64 + 256, 32),
                "in_proj.bias": (64 + 256,),
                "conv1d.weight": (64, 1, 4),
                "conv1d.bias": (64,),
                "out_proj.weight": (32, 32 + 128),
                "out_proj.bias": (32,),
            },
        ),
        # mamba2attn's kind: head_dim given, no biases, no MLP; rotary adds no weights
        (
            {
                "num_heads": 4,
                "num_heads_kv": 1,
                "head_dim": 16,
                "qkv_proj_bias": False,
                "out_proj_bias": False,
                "rotary_emb_dim": 8,
            },  # fmt: skip
            {"in_proj.weight": (16 * (4 + 2), 32), "out_proj.weight": (32, 64)},
        ),
    ],
)
def test_mha_has_the_parameter_names_and_shapes_of_mamba_ssm_mha(kwargs, expected):
    layer = MHA(32, **kwargs, causal=True, layer_idx=0)
    assert {k: tuple(v.shape) for k, v in layer.state_dict().items()} == expected


def naive_attention(layer: MHA, u: torch.Tensor) -> torch.Tensor:
    """The layer's math written out: loops over heads, rotary as complex multiplication."""
    B, L, _ = u.shape
    H, Hkv, D, r = layer.num_heads, layer.num_heads_kv, layer.head_dim, layer.rotary_emb_dim
    proj = u @ layer.in_proj.weight.T + layer.in_proj.bias
    qkv, mlp = proj[..., : layer.qkv_dim], proj[..., layer.qkv_dim :]
    if layer.d_conv:
        w, padded = layer.conv1d.weight[:, 0], F.pad(qkv, (0, 0, layer.d_conv - 1, 0))
        qkv = (
            torch.stack([(padded[:, t : t + layer.d_conv] * w.T).sum(1) for t in range(L)], 1)
            + layer.conv1d.bias
        )
    q = qkv[..., : H * D].reshape(B, L, H, D)
    k = qkv[..., H * D : (H + Hkv) * D].reshape(B, L, Hkv, D)
    v = qkv[..., (H + Hkv) * D :].reshape(B, L, Hkv, D)

    def rotary(x):
        half = r // 2
        freq = layer.rotary_emb_base ** (-torch.arange(half, dtype=torch.float64) * 2 / r)
        turn = torch.polar(torch.ones(L, half, dtype=torch.float64),
                           torch.arange(L, dtype=torch.float64)[:, None] * freq)  # fmt: skip
        pairs = torch.complex(x[..., :half].double(), x[..., half:r].double()) * turn[:, None]
        return torch.cat([pairs.real, pairs.imag, x[..., r:].double()], -1).to(x.dtype)

    q, k = rotary(q), rotary(k)
    heads = []
    for h in range(H):
        g = h // (H // Hkv)  # the key/value head this query head reads
        scores = q[:, :, h] @ k[:, :, g].transpose(1, 2) / math.sqrt(D)  # (B, L, L)
        future = torch.ones(L, L, dtype=torch.bool).triu(1)
        heads.append(scores.masked_fill(future, float("-inf")).softmax(-1) @ v[:, :, g])
    context = torch.cat(heads, -1)
    if layer.mlp_dim:
        up, gate = mlp.chunk(2, -1)
        context = torch.cat([context, up * F.silu(gate)], -1)
    return context @ layer.out_proj.weight.T + layer.out_proj.bias


def test_mha_forward_equals_naive_attention_with_gqa_rotary_conv_and_mlp():
    torch.manual_seed(0)
    layer = MHA(32, causal=True, layer_idx=0, **ATTN).double()
    u = torch.randn(2, 9, 32, dtype=torch.float64)
    torch.testing.assert_close(layer(u), naive_attention(layer, u))


@pytest.mark.parametrize(
    "kwargs",
    [
        ATTN,  # GQA, rotary in halves, convolution, MLP
        {"num_heads": 4, "num_heads_kv": 1, "rotary_emb_dim": 8, "rotary_emb_interleaved": True},
        {"num_heads": 2},  # plain multi-head attention
    ],
)
def test_prefill_then_steps_equal_the_full_forward(kwargs):
    """The prompt fills the cache; each step attends to every cached position, its own too."""
    torch.manual_seed(0)
    layer = MHA(32, causal=True, layer_idx=0, **kwargs).double()
    u = torch.randn(3, 12, 32, dtype=torch.float64)
    full = layer(u)
    params = InferenceParams(max_seqlen=16, max_batch_size=3)
    outs = [layer(u[:, :7], inference_params=params)]
    for t in range(7, 12):
        params.seqlen_offset = t
        outs.append(layer(u[:, t : t + 1], inference_params=params))
    torch.testing.assert_close(torch.cat(outs, 1), full)
    assert params.key_value_memory_dict[0][1].tolist() == [12, 12, 12]  # positions held


def test_a_prompt_longer_than_the_cache_is_refused_in_one_line():
    layer = MHA(32, num_heads=2, causal=True, layer_idx=3)
    params = InferenceParams(max_seqlen=4, max_batch_size=1)
    with pytest.raises(ValueError, match=r"^MHA layer 3: a prompt of 6 tokens [^\n]*$"):
        layer(torch.randn(1, 6, 32), inference_params=params)


# ----------------------------------------------------------------------- the backbone


@pytest.mark.parametrize("mixer", ["Mamba1", "Mamba2", "Mamba3"])
def test_a_hybrid_of_each_mixer_trains_a_step(mixer):
    model = hybrid_lm(mixer).train()
    assert type(model.backbone.layers[1].mixer) is MHA
    assert all(type(model.backbone.layers[i].mixer) is not MHA for i in (0, 2))
    ids = torch.randint(0, 64, (2, 12))
    attention = model.backbone.layers[1].mixer.in_proj.weight
    before = attention.detach().clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and not torch.equal(attention, before)


@pytest.mark.parametrize("mixer", ["Mamba1", "Mamba2", "Mamba3"])
def test_greedy_tokens_of_a_hybrid_are_the_argmax_of_its_full_forward(mixer):
    model = hybrid_lm(mixer)
    prompt = torch.randint(0, 64, (2, 11))
    out = model.generate(prompt, max_new_tokens=9)
    with torch.no_grad():
        logits = model(out)
    assert torch.equal(out[:, 11:], logits[:, 10:-1].argmax(-1))


def test_hybrid_prompts_of_different_lengths_each_get_the_tokens_they_get_alone():
    model = hybrid_lm("Mamba2")
    prompts = [torch.randint(0, 64, (n,)) for n in (3, 12, 1, 7)]
    together = model.generate(prompts, max_new_tokens=6)
    alone = [model.generate(p[None], max_new_tokens=6)[0] for p in prompts]
    assert all(torch.equal(a, b) for a, b in zip(together, alone, strict=True))


def test_a_longer_call_gets_a_larger_cache_and_a_pure_mamba_model_keeps_its_decoder():
    model = hybrid_lm("Mamba2")
    model.generate(torch.randint(0, 64, (1, 5)), max_new_tokens=5)
    small = decoder(model, 1, Sampling(), cuda_graph=True)
    assert small.max_seqlen == 64  # the least room a hybrid's decoder gets
    out = model.generate(torch.randint(0, 64, (1, 60)), max_new_tokens=40)
    large = decoder(model, 1, Sampling(), cuda_graph=True)
    assert large is not small and large.max_seqlen == 128 and out.shape == (1, 100)
    with torch.no_grad():
        assert torch.equal(out[:, 60:], model(out)[:, 59:-1].argmax(-1))
    pure = MambaLM(BackboneConfig(impl="reference", **TINY), 64).eval()
    pure.generate(torch.randint(0, 64, (1, 5)), max_new_tokens=5)
    kept = decoder(pure, 1, Sampling(), cuda_graph=True)
    pure.generate(torch.randint(0, 64, (1, 90)), max_new_tokens=40)
    assert decoder(pure, 1, Sampling(), cuda_graph=True) is kept


@pytest.mark.parametrize(
    "change, message",
    [
        ({"attn_layer_idx": [3]}, r"has 3: layers are numbered 0 to n_layer - 1"),
        ({"attn_layer_idx": [1, 1]}, r"names a layer twice"),
        ({"attn_cfg": {"num_heads": 5}}, r"d_model=32 does not split into num_heads=5"),
        ({"attn_cfg": {"num_heads": 4, "num_heads_kv": 3}}, r"not divisible by num_heads_kv=3"),
        ({"attn_cfg": {"num_heads": 4, "rotary_emb_dim": 9}}, r"rotary_emb_dim=9 must be even"),
        ({"attn_cfg": {"num_heads": 4, "causal": False}}, r"causal=false would let"),
        ({"attn_cfg": {"num_heads": 4, "n_heads": 4}}, r"unknown \['n_heads'\]"),
    ],
)
def test_a_bad_attention_config_is_refused_in_one_line(change, message):
    given = {"attn_layer_idx": [1], "attn_cfg": {"num_heads": 4}, **change}
    with pytest.raises(ValueError, match=r"^backbone\.attn_[^\n]*?" + message + r"[^\n]*$"):
        BackboneConfig(**{**TINY, **given})


def test_the_config_stays_hashable_and_rebuilds_from_its_dict(tmp_path):
    model = hybrid_lm("Mamba2")
    config = model.backbone.config
    assert hash(config) == hash(BackboneConfig(**model.config["backbone"]))
    assert MambaLM.from_config(model.config).backbone.config == config
    torch.save({"config": config}, tmp_path / "config.pt")  # as a checkpoint stores it
    assert torch.load(tmp_path / "config.pt", weights_only=True)["config"] == config


# ----------------------------------------------------------------- mamba-ssm's format


def mamba2attn_folder(path, seed: int = 0):
    """A tiny checkpoint laid out as state-spaces/mamba2attn-2.7b's: Mamba2 layers, attention
    at attn_layer_idx with rotary, a conv over qkv and no biases; mamba-ssm's names."""
    torch.manual_seed(seed)
    d, vocab, heads, head_dim, conv = 32, 50, 4, 16, 4
    config = {
        "d_model": d,
        "d_intermediate": 0,
        "n_layer": 3,
        "vocab_size": vocab,
        "ssm_cfg": {"layer": "Mamba2", "d_state": 8, "headdim": 8, "chunk_size": 8},
        "attn_layer_idx": [1],
        "attn_cfg": {
            "causal": True,
            "d_conv": conv,
            "head_dim": head_dim,
            "num_heads": heads,
            "out_proj_bias": False,
            "qkv_proj_bias": False,
            "rotary_emb_dim": 8,
        },
        "rms_norm": True,
        "residual_in_fp32": True,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": 16,
        "tie_embeddings": True,
    }
    # the Mamba2 layers' names and shapes are test_pretrained's; the attention layer's are
    # mamba-ssm MHA's for this attn_cfg, written out
    mamba2 = MambaLM(BackboneConfig(impl="reference", d_model=d, n_layer=1, d_state=8,
                                    headdim=8, chunk_size=8), vocab).state_dict()  # fmt: skip
    layer0 = {k[len("backbone.layers.0.") :]: v for k, v in mamba2.items() if ".layers.0." in k}
    qkv = head_dim * 3 * heads
    attention = {
        "norm.weight": (d,),
        "mixer.in_proj.weight": (qkv, d),
        "mixer.conv1d.weight": (qkv, 1, conv),
        "mixer.conv1d.bias": (qkv,),
        "mixer.out_proj.weight": (d, heads * head_dim),
    }
    state = {"backbone.embedding.weight": torch.randn(64, d) * 0.1,
             "backbone.norm_f.weight": 1 + 0.1 * torch.randn(d)}  # fmt: skip
    for i in range(3):
        shapes = attention if i == 1 else {k: v.shape for k, v in layer0.items()}
        for name, shape in shapes.items():
            state[f"backbone.layers.{i}.{name}"] = torch.randn(shape) * 0.2
    state["lm_head.weight"] = state["backbone.embedding.weight"]
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    torch.save(state, path / "pytorch_model.bin")
    return path, state


def test_a_mamba_ssm_hybrid_folder_loads_strictly_and_round_trips(tmp_path):
    folder, state = mamba2attn_folder(tmp_path / "mamba2attn")
    model = MambaLM.from_pretrained(str(folder), impl="reference").eval()
    assert model.backbone.config.attn_layer_idx == (1,)
    ours = model.state_dict()
    assert set(ours) == set(state) - {"lm_head.weight"}
    assert all(torch.equal(ours[k], v) for k, v in state.items() if k in ours)

    out = model.save_pretrained(str(tmp_path / "export"))
    written = json.loads((out / "config.json").read_text())
    assert written["attn_layer_idx"] == [1]
    assert written["attn_cfg"]["causal"] is True and written["attn_cfg"]["d_conv"] == 4
    assert written["attn_cfg"]["rotary_emb_dim"] == 8 and written["attn_cfg"]["head_dim"] == 16
    saved = torch.load(out / "pytorch_model.bin", weights_only=True)
    assert set(saved) == set(state)
    again = MambaLM.from_pretrained(str(out), impl="reference").eval()
    ids = torch.randint(0, 50, (2, 10))
    with torch.no_grad():
        assert torch.equal(again(ids), model(ids))


def test_a_hybrid_whose_attention_is_not_causal_is_refused_in_one_line(tmp_path):
    folder, _ = mamba2attn_folder(tmp_path / "mamba2attn")
    config = json.loads((folder / "config.json").read_text())
    del config["attn_cfg"]["causal"]  # mamba-ssm's MHA then attends both ways
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"^[^\n]*attention layers are not causal[^\n]*$"):
        MambaLM.from_pretrained(str(folder), impl="reference")


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ({"mixer": "Mamba1"}, r"backbone\.mixer=Mamba1"),
        ({"d_intermediate": 0}, r"backbone\.d_intermediate=0"),
        ({}, r"attn_cfg\.d_conv=4"),  # ATTN: a convolution over q, k and v
    ],
    ids=["Mamba1", "no-mlp", "attention-conv"],
)
def test_a_hybrid_bamba_cannot_express_is_refused_by_the_hf_export_in_one_line(
    tmp_path, extra, problem
):
    config = {"mixer": "Mamba2", "d_intermediate": 64, **TINY, **extra}
    backbone = BackboneConfig(impl="reference", attn_layer_idx=[1], attn_cfg=ATTN, **config)
    with pytest.raises(ValueError, match=rf"^{problem}[^\n]*format=mamba_ssm$"):
        MambaLM(backbone, 64).save_pretrained(str(tmp_path / "hf"), format="hf")
    assert not (tmp_path / "hf").exists()


# ------------------------------------------------------------- HF's Bamba and Granite 4.0


def hf_hybrid_folder(path, family="bamba", **config):
    """A tiny random BambaForCausalLM, or a dense GraniteMoeHybridForCausalLM, saved by
    transformers with its defaults except the sizes: Mamba2 layers, GQA attention at layer 1,
    a SwiGLU MLP after every layer. Bamba turns half of each head by RoPE; this Granite turns
    whole heads (or none: `position_embedding_type=None`) and has muP multipliers."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    shape = dict(
        vocab_size=100, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, mamba_n_heads=8, mamba_d_state=16, mamba_n_groups=1,
        mamba_chunk_size=8,
    )  # fmt: skip
    if family == "bamba":
        shape |= dict(attn_layer_indices=[1], intermediate_size=128)
        make = transformers.BambaForCausalLM, transformers.BambaConfig
    else:
        shape |= dict(
            layer_types=["mamba", "attention", "mamba"], shared_intermediate_size=128,
            num_local_experts=0, position_embedding_type="rope", embedding_multiplier=12.0,
            residual_multiplier=0.22, attention_multiplier=0.2, logits_scaling=6.0,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        )  # fmt: skip
        make = transformers.GraniteMoeHybridForCausalLM, transformers.GraniteMoeHybridConfig
    hf = make[0](make[1](**{**shape, **config}))
    with torch.no_grad():  # away from the initialisation's zeros and ones
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf.eval().save_pretrained(path)
    return hf


HF_HYBRIDS = {  # family -> (transformers class name, model_type, extra config)
    "bamba": ("BambaForCausalLM", "bamba", {}),
    "granite": ("GraniteMoeHybridForCausalLM", "granitemoehybrid", {}),
    "granite_nope": ("GraniteMoeHybridForCausalLM", "granitemoehybrid",
                     {"position_embedding_type": None}),
}  # fmt: skip


def hf_class(family: str):
    return getattr(pytest.importorskip("transformers"), HF_HYBRIDS[family][0])


@pytest.mark.parametrize("family", list(HF_HYBRIDS))
def test_hf_hybrid_checkpoint_gives_the_logits_of_hf_own_forward(tmp_path, family):
    extra = HF_HYBRIDS[family][2]
    hf = hf_hybrid_folder(tmp_path / "hf", family.split("_")[0], **extra)
    model = MambaLM.from_pretrained(str(tmp_path / "hf"), impl="reference").eval()
    config = model.backbone.config
    assert config.attn_layer_idx == (1,) and config.d_intermediate == 128
    rotary = {"bamba": 8, "granite": 16, "granite_nope": 0}[family]
    assert (config.attn_cfg.num_heads_kv, config.attn_cfg.rotary_emb_dim) == (2, rotary)
    if family != "bamba":
        assert (config.embedding_multiplier, config.residual_multiplier) == (12.0, 0.22)
        assert (config.logits_scaling, config.attn_cfg.softmax_scale) == (6.0, 0.2)
        assert config.norm_epsilon == 1e-6  # Granite's default, its Mamba layers' norm too
    ids = torch.randint(0, 100, (2, 13))
    with torch.no_grad():
        want = hf(ids).logits
        got = model(ids)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    out = model.generate(ids[:, :5], max_new_tokens=6)  # and it decodes as its forward reads
    with torch.no_grad():
        assert torch.equal(out[:, 5:], model(out)[:, 4:-1].argmax(-1))
    if family != "bamba":  # mamba-ssm's config has no muP multipliers nor Granite's epsilon
        with pytest.raises(ValueError, match=r"^backbone\.norm_epsilon=1e-06[^\n]*format=hf$"):
            model.save_pretrained(str(tmp_path / "ssm"))
        assert not (tmp_path / "ssm").exists()
        return
    # written out in mamba-ssm's format, it is the same model there
    again = MambaLM.from_pretrained(str(model.save_pretrained(str(tmp_path / "ssm"))))
    with torch.no_grad():
        assert torch.equal(again.eval()(ids), got)


@pytest.mark.parametrize("family", list(HF_HYBRIDS))
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_an_hf_hybrid_checkpoint_goes_back_out_as_one_that_transformers_loads(
    tmp_path, tied, family
):
    """Bamba (or Granite) in, changed (as fine-tuning would), the same family out:
    transformers reads our export with our logits, and we read it back exactly."""
    cls, model_type, extra = HF_HYBRIDS[family]
    hf_hybrid_folder(tmp_path / "hf", family.split("_")[0], tie_word_embeddings=tied, **extra)
    model = MambaLM.from_pretrained(str(tmp_path / "hf"), impl="reference").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    model.save_pretrained(str(tmp_path / "out"), format="hf")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == model_type and config["tie_word_embeddings"] == tied
    hf = hf_class(family).from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(0, 100, (2, 13))
    with torch.no_grad():
        ours = model(ids)
        torch.testing.assert_close(hf(ids).logits, ours, rtol=1e-4, atol=1e-4)
        back = MambaLM.from_pretrained(str(tmp_path / "out"), impl="reference").eval()
        assert torch.equal(back(ids), ours)


def test_our_own_hybrid_exports_as_a_bamba_checkpoint(tmp_path):
    """A hybrid trained here, in Bamba's shape (MLP after each layer, RoPE on half a head,
    no conv in the attention), loads in transformers as a BambaForCausalLM."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = BackboneConfig(
        impl="reference", mixer="Mamba2", d_intermediate=128, attn_layer_idx=[0, 2],
        attn_cfg={"num_heads": 4, "num_heads_kv": 2, "rotary_emb_dim": 4}, **TINY,
    )  # fmt: skip
    model = MambaLM(config, 50).eval()
    model.save_pretrained(str(tmp_path / "out"), format="hf")
    hf = transformers.BambaForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(0, 50, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["bamba", "granite"])
def test_an_hf_hybrid_fine_tunes_from_the_command_line_and_ships_back_in_its_family(
    tmp_path, family, capsys
):
    """init_from a Bamba (Granite) folder, 20 steps of fit on text with its tokenizer, export
    --format hf: transformers reads the export with the trained model's logits, and it
    carries the tokenizer, so the exported folder generates on its own."""
    from conftest import CORPUS, LANGUAGE_MODEL, QUIET, bpe_tokenizer
    from tokenizers import Tokenizer

    from {{ cookiecutter.package_name }}.checkpoint import load_trained
    from {{ cookiecutter.package_name }}.cli import main

    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text(CORPUS)
    tokenizer = bpe_tokenizer(tmp_path / "tokenizer.json", vocab_size=300)
    vocab = Tokenizer.from_file(str(tokenizer)).get_vocab_size()
    hf_hybrid_folder(tmp_path / "hf", family, vocab_size=vocab)
    main([
        "fit", LANGUAGE_MODEL, *QUIET,
        f"--model.net.init_from={tmp_path / 'hf'}", "--model.net.backbone.impl=reference",
        f"--data={PACKAGE}.data.TextFile", f"--data.path={tmp_path / 'texts'}",
        f"--data.tokenizer={tokenizer}", "--data.seq_len=16", "--data.batch_size=2",
        "--trainer.max_steps=20", f"--run.root={tmp_path / 'runs'}", "--run.id=ft",
    ])  # fmt: skip
    last = tmp_path / "runs" / "ft" / "checkpoints" / "last.ckpt"
    trained = load_trained(last, impl="reference").net.eval()
    before = MambaLM.from_pretrained(str(tmp_path / "hf"), impl="reference")
    assert not torch.equal(trained.lm_head.weight, before.lm_head.weight)  # it was trained
    main(["export", "--ckpt_path", str(last), "--format", "hf", "--out", str(tmp_path / "out")])
    assert (tmp_path / "out" / "tokenizer.json").is_file()
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == HF_HYBRIDS[family][1]
    hf = hf_class(family).from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(0, vocab, (2, 13))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, trained(ids), rtol=1e-4, atol=1e-4)
    # it generates from its run and from the exported folder alike, with its own tokenizer
    texts = []
    for source in (f"--ckpt_path={last}", f"--pretrained={tmp_path / 'out'}"):
        capsys.readouterr()
        main(["generate", source, "--prompt=the cat", "--max_new_tokens=5"])
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] and "the cat" in texts[0]


@pytest.mark.parametrize(
    ("config", "feature"),
    [
        ({"model_type": "granitemoehybrid", "num_local_experts": 8}, "mixture-of-experts MLPs"),
        ({"model_type": "granitemoehybrid"}, "mixture-of-experts MLPs"),  # transformers' 8
        ({"model_type": "falcon_h1"}, "attention and Mamba side by side"),
    ],
    ids=["moe", "moe_by_default", "parallel"],
)
def test_an_hf_hybrid_this_backbone_cannot_build_stops_in_one_line_writing_nothing(
    tmp_path, capsys, config, feature
):
    from conftest import LANGUAGE_MODEL, QUIET

    from {{ cookiecutter.package_name }}.cli import main

    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**config, "hidden_size": 64}))
    (folder / "model.safetensors").write_bytes(b"")  # never read: the config stops it first
    with pytest.raises(SystemExit) as stop:
        main([
            "fit", LANGUAGE_MODEL, *QUIET, f"--model.net.init_from={folder}",
            f"--data={PACKAGE}.data.SelectiveCopying", f"--run.root={tmp_path / 'runs'}",
        ])  # fmt: skip
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and feature in err[0] and "not supported" in err[0], err
    assert not (tmp_path / "runs").exists()


def test_a_hub_checkpoint_is_refused_from_its_config_before_its_weights_are_fetched(
    tmp_path, monkeypatch
):
    from {{ cookiecutter.package_name }} import pretrained

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "zamba2"}))

    def hub_file(name_or_path, name, revision=None, required=True):
        assert name == "config.json", f"{name} fetched before the config was read"
        return tmp_path / name

    monkeypatch.setattr(pretrained, "hub_file", hub_file)
    with pytest.raises(ValueError, match=r"^org/zamba: a zamba2 checkpoint has attention blocks"):
        pretrained.read_checkpoint("org/zamba")


def test_hf_bamba_with_a_scaled_rope_is_refused_in_one_line(tmp_path):
    hf_hybrid_folder(tmp_path / "bamba")
    config = json.loads((tmp_path / "bamba" / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    (tmp_path / "bamba" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"^[^\n]*bamba: a scaled RoPE[^\n]*$"):
        MambaLM.from_pretrained(str(tmp_path / "bamba"), impl="reference")
