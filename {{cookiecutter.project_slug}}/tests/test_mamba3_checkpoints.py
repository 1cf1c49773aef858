"""A Mamba-3 checkpoint in mamba-ssm's folder format loads strictly and goes back out unchanged.

mamba-ssm 2.3.2.post1's own MambaLMHeadModel refuses layer="Mamba3", so the folder is written
here by hand, with the names and shapes its Mamba3 constructor gives its parameters.
"""

import json
import math

import pytest
import torch

from {{ cookiecutter.package_name }}.model import MambaLM

D_MODEL, N_LAYER, VOCAB, D_STATE, HEADDIM = 32, 2, 50, 16, 16


def mamba3_names_and_shapes(mimo_rank: int = 1) -> dict[str, tuple[int, ...]]:
    """From mamba_ssm/modules/mamba3.py's __init__ (expand 2, ngroups 1, rope_fraction 0.5)."""
    d_inner = 2 * D_MODEL
    nheads = d_inner // HEADDIM
    angles = D_STATE // 2 // 2  # half the state rotated, in pairs
    in_proj = 2 * d_inner + 2 * D_STATE * mimo_rank + 3 * nheads + angles
    shapes = {
        "in_proj.weight": (in_proj, D_MODEL),
        "dt_bias": (nheads,),
        "B_bias": (nheads, mimo_rank, D_STATE),
        "C_bias": (nheads, mimo_rank, D_STATE),
        "B_norm.weight": (D_STATE,),
        "C_norm.weight": (D_STATE,),
        "D": (nheads,),
        "out_proj.weight": (D_MODEL, d_inner),
    }
    if mimo_rank > 1:
        shapes.update({f"mimo_{k}": (nheads, mimo_rank, HEADDIM) for k in "xzo"})
    return shapes


def write_folder(path, ssm_cfg: dict, mimo_rank: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    rows = math.ceil(VOCAB / 8) * 8
    state = {"backbone.embedding.weight": torch.randn(rows, D_MODEL)}
    for i in range(N_LAYER):
        state[f"backbone.layers.{i}.norm.weight"] = 1 + 0.1 * torch.randn(D_MODEL)
        for name, shape in mamba3_names_and_shapes(mimo_rank).items():
            state[f"backbone.layers.{i}.mixer.{name}"] = 0.1 * torch.randn(shape)
    state["backbone.norm_f.weight"] = torch.ones(D_MODEL)
    state["lm_head.weight"] = state["backbone.embedding.weight"]
    config = {
        "d_model": D_MODEL,
        "d_intermediate": 0,
        "n_layer": N_LAYER,
        "vocab_size": VOCAB,
        "ssm_cfg": {"layer": "Mamba3", "d_state": D_STATE, "headdim": HEADDIM, **ssm_cfg},
        "attn_layer_idx": [],
        "attn_cfg": {},
        "rms_norm": True,
        "residual_in_fp32": True,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": 8,
        "tie_embeddings": True,
    }
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    torch.save(state, path / "pytorch_model.bin")
    return state


@pytest.mark.parametrize(
    "ssm_cfg,rank",
    [
        ({"chunk_size": 64, "A_floor": 1e-4, "dt_min": 0.001}, 1),
        ({"is_mimo": True, "mimo_rank": 2, "is_outproj_norm": False}, 2),
    ],
    ids=["siso", "mimo"],
)
@torch.no_grad()
def test_a_mamba_ssm_format_mamba3_folder_loads_strictly_and_round_trips(tmp_path, ssm_cfg, rank):
    state = write_folder(tmp_path / "theirs", ssm_cfg, rank)
    model = MambaLM.from_pretrained(str(tmp_path / "theirs"), impl="reference").eval()
    config = model.backbone.config
    shape = (config.mixer, config.d_state, config.headdim, config.is_mimo)
    assert shape == ("Mamba3", D_STATE, HEADDIM, rank > 1)
    ours = model.state_dict()
    for key, value in state.items():
        if key != "lm_head.weight":
            torch.testing.assert_close(ours[key], value, rtol=0, atol=0)
    ids = torch.randint(0, VOCAB, (2, 20))
    logits = model(ids)

    model.save_pretrained(str(tmp_path / "ours"), format="mamba_ssm")
    written = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert written["ssm_cfg"]["layer"] == "Mamba3"
    saved = torch.load(tmp_path / "ours" / "pytorch_model.bin", weights_only=True)
    assert set(saved) == set(state)
    again = MambaLM.from_pretrained(str(tmp_path / "ours"), impl="reference").eval()
    torch.testing.assert_close(again(ids), logits, rtol=0, atol=0)


def test_a_mamba3_model_is_not_exported_in_hfs_format(tmp_path):
    write_folder(tmp_path / "theirs", {})
    model = MambaLM.from_pretrained(str(tmp_path / "theirs"), impl="reference")
    with pytest.raises(ValueError, match="HF transformers has no Mamba-3 model"):
        model.save_pretrained(str(tmp_path / "out"), format="hf")
    assert not (tmp_path / "out").exists()
