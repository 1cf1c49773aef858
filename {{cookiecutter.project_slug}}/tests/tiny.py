"""The smallest model the CLI tests train: the pure-PyTorch twin, one layer of d_model 16."""

TINY_BACKBONE = [
    "--model.backbone.impl=reference",
    "--model.backbone.d_model=16",
    "--model.backbone.n_layer=1",
    "--model.backbone.d_state=8",
    "--model.backbone.headdim=8",
    "--model.backbone.chunk_size=16",
]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
TINY = [*TINY_BACKBONE, *QUIET]
