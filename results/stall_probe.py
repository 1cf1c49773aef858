"""Which of the two layers takes over in the first steps of the induction-heads paper recipe.

Trains the model of configs/induction_heads_paper.yaml (2 Mamba1 layers, d_model 64, batch 8,
AdamW lr 3e-3, betas (0.9, 0.95), no weight decay, clipping at 1.0) on the CPU, with a baked
language-model project on the path, and prints every 16 steps, at the scored (last) position:
each layer's gated activation (the input of its out_proj), its out_proj output, the token
embedding, and each layer's out_proj gradient norm.

    PYTHONPATH=<bake>/src python results/stall_probe.py --seed 12 --steps 160
    PYTHONPATH=<bake>/src python results/stall_probe.py --seed 12 --untied

The package name is the bake's (mamba_project by default: --package).
"""

import argparse
import importlib
import json

import torch
import torch.nn.functional as F

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--steps", type=int, default=64)
parser.add_argument("--lr", type=float, default=3e-3)
parser.add_argument("--untied", action="store_true", help="an output head of its own")
parser.add_argument("--package", default="mamba_project")
args = parser.parse_args()
model = importlib.import_module(f"{args.package}.model")
backbone = importlib.import_module(f"{args.package}.backbone")
data = importlib.import_module(f"{args.package}.data")

torch.set_num_threads(1)
task = data.InductionHeads(seq_len=256, num_symbols=15, batch_size=8, num_train_samples=1638400)
task.setup("fit")
torch.manual_seed(args.seed)
shape = backbone.BackboneConfig(mixer="Mamba1", d_model=64, n_layer=2, d_state=16, impl="reference")
net = model.MambaLM(shape, vocab_size=task.vocab_size, tie_embeddings=not args.untied)
optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
gated = {}  # layer -> (B, d_inner) at the last position
for i, layer in enumerate(net.backbone.layers):
    layer.mixer.out_proj.register_forward_hook(
        lambda mod, inputs, out, i=i: gated.__setitem__(i, inputs[0][:, -1].detach())
    )

for step, (inputs, targets) in enumerate(task.train_dataloader()):
    if step >= args.steps:
        break
    loss = F.cross_entropy(net(inputs)[:, -1].float(), targets[:, -1])
    optimizer.zero_grad()
    loss.backward()
    grads = [layer.mixer.out_proj.weight.grad.norm().item() for layer in net.backbone.layers]
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    optimizer.step()
    if step % 16 == 0 or step == args.steps - 1:
        with torch.no_grad():
            layers = net.backbone.layers
            row = {
                "step": step,
                "loss": round(loss.item(), 3),
                "gated": [round(gated[i].norm(dim=-1).mean().item(), 2) for i in range(2)],
                "out": [
                    round(layers[i].mixer.out_proj(gated[i]).norm(dim=-1).mean().item(), 2)
                    for i in range(2)
                ],
                "embedding": round(
                    net.backbone.embedding(inputs)[:, -1].norm(dim=-1).mean().item(), 3
                ),
                "out_proj_grad": [round(g, 4) for g in grads],
            }
        print(json.dumps(row), flush=True)
