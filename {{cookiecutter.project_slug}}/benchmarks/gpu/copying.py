"""Selective copying at the Mamba paper's model size on the GPU: time to accuracy."""

import time

import lightning as L
import torch

from {{ cookiecutter.package_name }}.backbone import BackboneConfig
from {{ cookiecutter.package_name }}.module import MambaModule


class _Curve(L.Callback):
    def __init__(self):
        self.start, self.points = time.perf_counter(), []

    def on_validation_end(self, trainer, module):
        acc = trainer.callback_metrics.get("val/acc")
        if acc is not None:
            point = (round(time.perf_counter() - self.start, 1), trainer.global_step, float(acc))
            self.points.append(point)
            print(f"  copying: {point[0]:6.1f} s  step {point[1]:5d}  val acc {point[2]:.4f}")


def section_copying(seconds: float, seq_len: int) -> dict:
    """Selective copying at the Mamba paper's model size (2 layers, d_model 64, vocab 16)."""
    from {{ cookiecutter.package_name }}.data import SelectiveCopying

    torch.manual_seed(0)
    data = SelectiveCopying(
        seq_len=seq_len,
        num_tokens=16,
        num_symbols=14,
        batch_size=64,
        num_train_samples=10**7,
        num_val_samples=512,
        num_workers=4,
    )
    config = BackboneConfig(impl="fused", mixer="Mamba1", d_model=64, n_layer=2, d_state=16)
    model = MambaModule(backbone=config, vocab_size=data.vocab_size, lr=3e-3, warmup_steps=200)
    curve = _Curve()
    trainer = L.Trainer(
        accelerator="gpu",
        devices=1,
        precision="bf16-mixed",
        max_steps=10**6,
        max_time={"seconds": seconds},
        val_check_interval=250,
        check_val_every_n_epoch=None,
        gradient_clip_val=1.0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[curve],
    )
    trainer.fit(model, data)
    return {"seq_len": seq_len, "seconds": seconds, "curve": curve.points}
