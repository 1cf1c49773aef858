"""Which of the two layers takes over in the first steps of the induction-heads paper recipe.

Trains the model, data, optimizer and clipping of a baked language-model project's
configs/induction_heads_paper.yaml (read from the bake on the path) on the CPU, with the plain
PyTorch scan, and prints every 16 steps, at the scored (last) position: each layer's gated
activation (the input of its out_proj) and out_proj output as the forward computed them, the
token embedding, and each layer's out_proj gradient norm.

    PYTHONPATH=<bake>/src python results/stall_probe.py --seed 12 --steps 160
    PYTHONPATH=<bake>/src python results/stall_probe.py --seed 12 --untied
    PYTHONPATH=<bake>/src python results/stall_probe.py --seed 7 --lr 1e-3 --betas .9 .999 --clip 0

The package name is the bake's (mamba_project by default: --package).
"""

import argparse
import importlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--steps", type=int, default=64)
parser.add_argument("--lr", type=float, help="default: the config's")
parser.add_argument("--betas", type=float, nargs=2, help="Adam's betas; default: the config's")
parser.add_argument("--clip", type=float, help="clipping norm, 0: none; default: the config's")
parser.add_argument("--untied", action="store_true", help="an output head of its own")
parser.add_argument("--package", default="mamba_project")
args = parser.parse_args()
model = importlib.import_module(f"{args.package}.model")
backbone = importlib.import_module(f"{args.package}.backbone")
data = importlib.import_module(f"{args.package}.data")

config = yaml.safe_load(
    (Path(model.__file__).parents[2] / "configs/induction_heads_paper.yaml").read_text()
)
learner = config["model"]["init_args"]
clip = config["trainer"]["gradient_clip_val"] if args.clip is None else args.clip

torch.set_num_threads(1)
task = data.InductionHeads(**config["data"]["init_args"])
task.setup("fit")
torch.manual_seed(args.seed)
shape = backbone.BackboneConfig(**learner["net"]["backbone"], impl="reference")
net = model.MambaLM(shape, vocab_size=task.vocab_size, tie_embeddings=not args.untied)
optimizer = torch.optim.AdamW(
    net.parameters(),
    lr=args.lr or learner["lr"],
    betas=args.betas or learner["betas"],
    weight_decay=learner["weight_decay"],
)
scored = {}  # layer -> its out_proj's input (B, d_inner) and output (B, d_model), last position
for i, layer in enumerate(net.backbone.layers):
    layer.mixer.out_proj.register_forward_hook(
        lambda mod, inputs, out, i=i: scored.__setitem__(i, (inputs[0][:, -1], out[:, -1]))
    )

for step, (inputs, targets) in enumerate(task.train_dataloader()):
    if step >= args.steps:
        break
    loss = F.cross_entropy(net(inputs)[:, -1].float(), targets[:, -1])
    optimizer.zero_grad()
    loss.backward()
    grads = [layer.mixer.out_proj.weight.grad.norm().item() for layer in net.backbone.layers]
    if clip:
        torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
    optimizer.step()
    if step % 16 == 0 or step == args.steps - 1:
        with torch.no_grad():
            layers = range(len(net.backbone.layers))
            row = {
                "step": step,
                "loss": round(loss.item(), 3),
                "gated": [round(scored[i][0].norm(dim=-1).mean().item(), 2) for i in layers],
                "out": [round(scored[i][1].norm(dim=-1).mean().item(), 2) for i in layers],
                "embedding": round(
                    net.backbone.embedding(inputs)[:, -1].norm(dim=-1).mean().item(), 3
                ),
                "out_proj_grad": [round(g, 4) for g in grads],
            }
        print(json.dumps(row), flush=True)
