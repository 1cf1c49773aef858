"""On a CUDA GPU with mamba-ssm: the fused kernels are active and the twin matches them.

Skipped cleanly elsewhere.{% if cookiecutter.task == 'language_model' %} The template's GPU harness (harness/gpu_check.py) runs the full parity
grid; benchmarks/throughput.py times `fit`.{% endif %}
"""

import importlib.util

import pytest
import torch

from {{ cookiecutter.package_name }}.backbone import Backbone, BackboneConfig, resolve_impl
from {{ cookiecutter.package_name }}.machinery.kernels import check_kernels

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(
        importlib.util.find_spec("mamba_ssm") is None, reason="needs mamba-ssm (the GPU stack)"
    ),
]


def config(mixer, impl, **overrides):
    d_state = 16 if mixer == "Mamba1" else 64
    return BackboneConfig(
        impl=impl,
        mixer=mixer,
        d_model=128,
        n_layer=2,
        d_state=d_state,
        headdim=32,
        chunk_size=64,
        **overrides,
    )


def test_every_fast_path_is_active():
    assert check_kernels("require") == {
        "selective_scan": True,
        "causal_conv1d": True,
        "triton_ssd": True,
    }


def test_auto_picks_fused_on_a_gpu():
    assert resolve_impl("auto") == "fused"


# mamba-ssm's Triton SSD kernels run their float32 dot products in TF32: on an H200 their
# parameter gradients differ from a float64 run of the twin by 1.4e-3..2.3e-3 (outputs by 9e-5),
# while the float32 twin stays within 2.4e-5 of float64{% if cookiecutter.task == 'language_model' %} (the parity section
# of the template's harness/gpu_check.py){% endif %}.
MAMBA2 = pytest.param(
    "Mamba2", 1e-3, marks=pytest.mark.xfail(reason="fused SSD gradients carry TF32 error")
)


@pytest.mark.parametrize("mixer,tolerance", [("Mamba1", 1e-4), MAMBA2])
@pytest.mark.parametrize("d_intermediate", [0, 256])
def test_reference_matches_fused_outputs_and_gradients(mixer, tolerance, d_intermediate):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    fused = Backbone(config(mixer, "fused", d_intermediate=d_intermediate), 512).cuda()
    reference = Backbone(config(mixer, "reference", d_intermediate=d_intermediate), 512).cuda()
    reference.load_state_dict(fused.state_dict(), strict=True)
    ids = torch.randint(0, 512, (2, 257), device="cuda")
    weight = torch.randn(2, 257, 128, device="cuda")
    outs, grads = [], []
    for model in (fused, reference):
        out = model(ids)
        (out * weight).sum().backward()
        outs.append(out.detach())
        grads.append({n: p.grad for n, p in model.named_parameters()})
    rel = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
    assert rel(outs[0], outs[1]) <= tolerance
    for name in grads[1]:
        assert rel(grads[0][name], grads[1][name]) <= tolerance, name


@pytest.mark.parametrize("mixer", ["Mamba1", "Mamba2"])
def test_recurrent_decoding_with_fused_kernels_matches_reference(mixer):
    from {{ cookiecutter.package_name }}.backbone import InferenceParams

    torch.manual_seed(0)
    fused = Backbone(config(mixer, "fused"), 512).cuda().eval()
    reference = Backbone(config(mixer, "reference"), 512).cuda().eval()
    reference.load_state_dict(fused.state_dict(), strict=True)
    ids = torch.randint(0, 512, (2, 12), device="cuda")
    with torch.no_grad():
        outs = []
        for model in (fused, reference):
            params = InferenceParams(max_seqlen=12, max_batch_size=2)
            steps = [model(ids[:, :6], inference_params=params)]
            for t in range(6, 12):
                params.seqlen_offset = t
                steps.append(model(ids[:, t : t + 1], inference_params=params))
            outs.append(torch.cat(steps, 1))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-3, atol=1e-3)


def test_a_checkpoint_written_on_the_cpu_resumes_on_the_gpu_with_the_fused_kernels(tmp_path):
    """The CPU run (reference twin) writes last.ckpt; the same command on the GPU continues it."""
    import os
    import subprocess
    import sys

    from {{ cookiecutter.package_name }}.cli import main

    args = [
        "fit",
        "--config=configs/default.yaml",
        "--trainer.limit_val_batches=0",
        "--trainer.enable_progress_bar=false",
        f"--run.root={tmp_path}",
        "--run.id=cpu-to-gpu",
    ]
    package = "{{ cookiecutter.package_name }}"
    cpu = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    subprocess.run(
        [sys.executable, "-m", package, *args, "--trainer.max_steps=20"], env=cpu, check=True
    )
    cli = main([*args, "--trainer.max_steps=30"])
    assert cli.model.net.backbone.impl == "fused"
    assert cli.trainer.global_step == 30  # continued from step 20, not from scratch
    state = cli.trainer.optimizers[0].state
    assert all(int(s["step"]) == 30 for s in state.values())


@torch.no_grad()
def test_a_batch_over_one_call_of_the_mamba2_kernels_runs_in_groups():
    # 2 samples of 2^21 tokens in chunks of 64: 65536 (sample, chunk) pairs, one more than the
    # Triton SSD kernels launch at once ("invalid argument" before the backbone split batches)
    torch.manual_seed(0)
    model = Backbone(config("Mamba2", "fused"), vocab_size=16).cuda()
    ids = torch.randint(0, 16, (2, 64 * 32768), device="cuda")
    assert model.samples_per_call(ids.shape[1]) == 1
    both = model(ids)
    torch.testing.assert_close(both[1:], model(ids[1:]), rtol=0, atol=0)
{%- if cookiecutter.task == 'language_model' %}


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("mixer", ["Mamba1", "Mamba2"])
@torch.no_grad()
def test_mamba_ssm_loads_our_export_and_we_load_its_save_with_equal_logits(mixer, tied, tmp_path):
    """MambaLM.save_pretrained(format=mamba_ssm) is what MambaLMHeadModel.from_pretrained reads,
    and a MambaLMHeadModel's save_pretrained is what MambaLM.from_pretrained reads."""
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    from {{ cookiecutter.package_name }}.model import MambaLM

    torch.manual_seed(0)
    ours = MambaLM(config(mixer, "fused"), vocab_size=1000, tie_embeddings=tied).cuda().eval()
    ours.save_pretrained(tmp_path / "ours", format="mamba_ssm")
    theirs = MambaLMHeadModel.from_pretrained(str(tmp_path / "ours"), device="cuda").eval()
    assert theirs.config.tie_embeddings == tied
    ids = torch.randint(0, 1000, (2, 300), device="cuda")
    want = ours(ids)
    torch.testing.assert_close(theirs(ids).logits[..., :1000], want, rtol=1e-4, atol=1e-4)
    theirs.save_pretrained(str(tmp_path / "theirs"))
    back = MambaLM.from_pretrained(str(tmp_path / "theirs"), impl="fused").cuda().eval()
    assert back.tie_embeddings == tied
    torch.testing.assert_close(back(ids), want, rtol=0, atol=0)
{%- endif %}


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_the_loss_kernel_equals_its_plain_pytorch_body(dtype, rtol):
    from {{ cookiecutter.package_name }}.loss import scored_rows

    g = torch.Generator(device="cuda").manual_seed(0)
    n, v = 1000, 50280  # a row longer than one block of the kernel, and not a multiple of it
    logits = (4 * torch.randn(n, v, device="cuda", generator=g)).to(dtype)
    targets = torch.randint(0, v, (n,), device="cuda", generator=g)
    targets[:7] = -100
    logits[10], logits[10, targets[10]] = -5.0, 60.0  # a sure row: loss about 1e-24
    want = scored_rows(logits.clone(), targets, -100, True, kernels=False)
    got = scored_rows(logits.clone(), targets, -100, True, kernels=True)
    torch.testing.assert_close(got[0], want[0].float(), rtol=1e-5, atol=0)
    assert 0 < got[0][10] < 1e-20 and got[0][:7].abs().max() == 0
    assert torch.equal(got[1].bool(), want[1])
    torch.testing.assert_close(got[2].float(), want[2].float(), rtol=rtol, atol=1e-7)
    assert got[2][:7].abs().max() == 0
{%- if cookiecutter.task == 'language_model' %}


def test_the_training_loss_with_the_kernel_equals_it_without():
    from {{ cookiecutter.package_name }}.loss import linear_cross_entropy

    g = torch.Generator(device="cuda").manual_seed(0)
    hidden = torch.randn(2, 2500, 256, device="cuda", generator=g)
    weight = torch.randn(50280, 256, device="cuda", generator=g) * 256**-0.5
    targets = torch.randint(0, 50280, (2, 2500), device="cuda", generator=g)
    targets[0, :100] = -100
    results = []
    for kernels in (False, True):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        with torch.autocast("cuda", torch.bfloat16):
            loss, correct = linear_cross_entropy(h, w, targets, -100, kernels=kernels)
        loss.backward()
        results.append((loss, correct, h.grad, w.grad))
    (loss0, correct0, gh0, gw0), (loss1, correct1, gh1, gw1) = results
    torch.testing.assert_close(loss1, loss0, rtol=1e-5, atol=0)
    assert correct1 == correct0
    for got, want in ((gh1, gh0), (gw1, gw0)):
        assert (got - want).norm() / want.norm() < 1e-2  # bf16 gradients, rounded apart
{%- endif %}
