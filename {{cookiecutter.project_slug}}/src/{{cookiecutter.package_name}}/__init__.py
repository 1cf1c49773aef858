"""A Mamba model trained with PyTorch Lightning: backbone, module, data and CLI."""

__version__ = "0.1.0"
