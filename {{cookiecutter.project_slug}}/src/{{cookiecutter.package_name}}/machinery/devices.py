"""Where a run computes: the accelerator and precision a Trainer gets when the config leaves
them to us, and the settings a CPU would not honour as written.

    auto precision   bf16-mixed on a GPU with bf16, else 32-true
    auto accelerator Lightning's choice, except Apple's MPS (no float64): the CPU, said in a line
    on a CPU         float16 is refused; more processes than cores is said
    gpu without one  refused in one line, before anything is written
"""

import os

import torch
from lightning.pytorch.accelerators import MPSAccelerator
from lightning.pytorch.utilities import rank_zero_info


def device_settings(trainer, mixer: str) -> dict:
    """Trainer keyword arguments for the config's `trainer` section (a Namespace)."""
    requested = trainer.get("accelerator", "auto")
    if requested in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"trainer.accelerator={requested} needs a CUDA GPU and this machine has none "
            "(torch.cuda.is_available() is False); use --trainer.accelerator=auto or cpu, or "
            "run on a GPU machine (modal run modal_app.py ...)"
        )
    settings = {"accelerator": pick_accelerator(requested, mixer)}
    if trainer.get("precision") is None:
        settings["precision"] = default_precision()
    check_cpu_settings(settings["accelerator"], trainer)
    return settings


def default_precision() -> str:
    """bf16-mixed on a GPU that has bf16, else full fp32."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def float64_works(device: str) -> bool:
    """Whether `device` computes in float64. Apple's MPS does not."""
    try:
        torch.ones(1, dtype=torch.float64, device=device).add_(1)
    except (TypeError, RuntimeError):
        return False
    return True


def check_cpu_settings(accelerator: str, trainer) -> None:
    """Settings that a CPU run would not honour as written: refused or said, before any work."""
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if not on_cpu:
        return
    precision = str(trainer.get("precision"))
    if precision.startswith("16"):
        raise ValueError(
            f"trainer.precision={precision} needs a CUDA GPU (float16 with a loss scaler); on a "
            "CPU Lightning would train in bf16 instead. Use --trainer.precision=bf16-mixed or "
            "32-true"
        )
    devices, cores = trainer.get("devices"), os.cpu_count() or 1
    if isinstance(devices, int) and devices > cores:
        rank_zero_info(
            f"trainer.devices={devices} on a CPU with {cores} cores: {devices} processes share "
            f"{cores} cores, each slower than one alone"
        )


def pick_accelerator(requested: str, mixer: str | None) -> str:
    """Lightning's `auto` picks MPS on an Apple-silicon Mac; without float64 we take the CPU.

    Mamba1's reference scan solves each chunk in float64, so it cannot run on MPS at all, and
    the reference Mamba2 is not tested there: `auto` runs on the CPU and says why. Asked for
    by name, MPS is refused for Mamba1 and left to the user for Mamba2.
    """
    if requested not in ("auto", "mps") or not MPSAccelerator.is_available():
        return requested
    if float64_works("mps"):
        return requested
    if requested == "mps" and mixer == "Mamba1":
        raise ValueError(
            "trainer.accelerator=mps: MPS has no float64, which the Mamba1 reference scan "
            "computes in; use --trainer.accelerator=cpu (or a CUDA GPU)."
        )
    if requested == "auto":
        rank_zero_info(
            "trainer.accelerator=auto -> cpu, not Apple's MPS: MPS has no float64 (the Mamba1 "
            "reference scan needs it) and the reference backbone is not tested there. "
            "--trainer.accelerator=mps tries it with Mamba2."
        )
        return "cpu"
    return requested
