"""The layers of the backbone, one class each, with mamba-ssm's names (see each file):

    layers.py     RMSNorm, GatedRMSNorm, GatedMLP, Block: what every block shares
    mamba1.py     Mamba   (selective scan)
    mamba2.py     Mamba2  (SSD)
    mamba3.py     Mamba3  (Mamba-3: trapezoidal SSD with data-dependent rotations; SISO and MIMO)
    attention.py  MHA     (attention with a key-value cache: the attention layers of a hybrid)

A mixer is one `nn.Module` on every device. Its `forward` calls the kernels through `ops`
(mamba-ssm's fused kernels on a GPU that has them, plain PyTorch elsewhere), and its `step` and
`allocate_inference_cache` are all that decoding uses. To change a mixer, edit its class: the
edit runs on the CPU and on the GPU alike.
"""

from .attention import MHA
from .layers import Block, GatedMLP, GatedRMSNorm, RMSNorm
from .mamba1 import Mamba
from .mamba2 import Mamba2
from .mamba3 import Mamba3

# backbone.mixer -> class
MIXERS = {"Mamba1": Mamba, "Mamba2": Mamba2, "Mamba3": Mamba3}

__all__ = [
    "MHA", "MIXERS", "Block", "GatedMLP", "GatedRMSNorm", "Mamba", "Mamba2", "Mamba3", "RMSNorm",
]  # fmt: skip
