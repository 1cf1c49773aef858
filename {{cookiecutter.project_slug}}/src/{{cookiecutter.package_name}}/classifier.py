"""The sequence classifier: a Mamba backbone over real-valued series. Plain PyTorch.

(B, L, C) -> input projection -> backbone -> pooling over time -> class logits (B, K)
"""

from dataclasses import asdict
from typing import Literal

from torch import Tensor, nn

from .backbone import Backbone, BackboneConfig


class MambaClassifier(nn.Module):
    """Series (B, L, num_channels) -> class logits (B, num_classes).

    Args:
        backbone: the backbone's shape and implementation (impl: auto | fused | reference).
        num_channels / num_classes: the data's; the CLI fills them in from the data module.
        pooling: how the sequence is summarised: the "mean" over steps or the "last" step.
    """

    def __init__(
        self,
        backbone: BackboneConfig = BackboneConfig(),  # noqa: B008 (frozen: safe to share)
        num_channels: int | None = None,
        num_classes: int | None = None,
        pooling: Literal["mean", "last"] = "mean",
    ):
        super().__init__()
        if not (num_channels and num_classes and num_channels > 0 and num_classes > 1):
            raise ValueError(
                f"MambaClassifier needs num_channels >= 1 and num_classes >= 2, got "
                f"{num_channels!r} and {num_classes!r}; train it on a classification data "
                "module (SyntheticSeries, ArrayClassification), which sets them"
            )
        self.num_channels, self.num_classes, self.pooling = num_channels, num_classes, pooling
        self.input_proj = nn.Linear(num_channels, backbone.d_model)
        self.backbone = Backbone(backbone, vocab_size=None)
        self.head = nn.Linear(backbone.d_model, num_classes)

    @property
    def config(self) -> dict:
        """The arguments that rebuild this model's shape."""
        return {
            "backbone": asdict(self.backbone.config),
            "num_channels": self.num_channels,
            "num_classes": self.num_classes,
            "pooling": self.pooling,
        }

    @classmethod
    def from_config(cls, config: dict, impl: str | None = None) -> "MambaClassifier":
        backbone = BackboneConfig(**{**config["backbone"], **({"impl": impl} if impl else {})})
        return cls(backbone, config["num_channels"], config["num_classes"], config["pooling"])

    def forward(self, series: Tensor) -> Tensor:
        hidden = self.backbone(self.input_proj(series))  # (B, L, D)
        pooled = hidden.mean(1) if self.pooling == "mean" else hidden[:, -1]  # (B, D)
        return self.head(pooled)  # (B, K)
