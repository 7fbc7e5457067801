"""Can the demo backbone learn the demo set at all in a few hundred steps? Supervised, same run.

    python bench/learnability.py                 # ~2 minutes on 2 CPU cores
    python bench/learnability.py --steps 1000

Self-supervision cannot lift a probe further than the backbone can learn in the same budget, so
this is the ceiling check behind the demo recipe (docs/lab-notes.md). It trains the
demo config's backbone with labels (a linear layer on the average-pooled tokens, cross-entropy,
AdamW, batch 32, the deterministic eval crops of the train split, no augmentation) twice from the
same seed: with linear patches (the paper's ViT, the baseline) and with `model.conv_stem`. It
prints val top-1 every 100 steps for both and the ratio conv_stem / linear at the end.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make the repo root importable
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from cmd_model.backbone import build_backbone  # noqa: E402
from cmd_model.config import ModelConfig  # noqa: E402
from harness.config import load_config  # noqa: E402
from harness.preflight import prepare_paths  # noqa: E402
from shards.config import DataConfig  # noqa: E402
from shards.pipeline import eval_loader  # noqa: E402


def _split(data: DataConfig, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*eval_loader(data, split))
    return torch.cat(xs), torch.cat(ys)


def val_top1_curve(model_cfg: ModelConfig, train: tuple[torch.Tensor, torch.Tensor],
                   val: tuple[torch.Tensor, torch.Tensor], steps: int, lr: float, seed: int) -> list[float]:
    """Val top-1 after every 100 supervised steps (and the last)."""
    torch.manual_seed(seed)
    backbone = build_backbone(model_cfg)
    classes = int(train[1].max()) + 1
    head = torch.nn.Linear(backbone.embed_dim, classes)
    opt = torch.optim.AdamW([*backbone.parameters(), *head.parameters()], lr=lr, weight_decay=0.05)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / 30))
    gen = torch.Generator().manual_seed(seed)
    curve = []
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(train[1]), (32,), generator=gen)
        loss = F.cross_entropy(head(backbone(train[0][idx])[1].mean(1)), train[1][idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        warmup.step()
        if step % 100 == 0 or step == steps:
            backbone.eval()
            with torch.no_grad():
                pred = head(backbone(val[0])[1].mean(1)).argmax(1)
            backbone.train()
            curve.append(float((pred == val[1]).float().mean()))
    return curve


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tune_spaces/demo.yaml", help="config or space file (its data and model)")
    p.add_argument("--steps", type=int, default=400, help="supervised steps per backbone (default 400)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg = prepare_paths(load_config(a.config, []), a.config)
    train, val = _split(cfg.data, cfg.data.train_split), _split(cfg.data, cfg.data.val_split)
    print(f"{len(train[1])} train / {len(val[1])} val images at {tuple(train[0].shape[-2:])}, "
          f"{a.steps} steps, torch {torch.__version__}, {a.threads} thread(s)", flush=True)
    results = {}
    for name, stem in (("linear patches", False), ("conv_stem", True)):
        start = time.perf_counter()
        curve = val_top1_curve(replace(cfg.model, conv_stem=stem), train, val, a.steps, a.lr, a.seed)
        results[name] = curve[-1]
        print(f"{name:>15}: val top-1 per 100 steps {' '.join(f'{v:.3f}' for v in curve)} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    ratio = results["conv_stem"] / max(results["linear patches"], 1e-9)
    print(f"conv_stem / linear patches after {a.steps} steps: {ratio:.2f} "
          f"({results['conv_stem']:.3f} vs {results['linear patches']:.3f}; chance {1 / (int(val[1].max()) + 1):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
