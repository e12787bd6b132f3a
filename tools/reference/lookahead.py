#!/usr/bin/env python3
"""Reference trajectories for `virtex-optim`, computed with PyTorch.

Writes small files into crates/virtex-optim/tests/fixtures/ (committed; CI never runs Python):

- lookahead_sgd.safetensors           (1) torch.optim.SGD(momentum 0.9, coupled wd) in Lookahead(k=5,
                                          a=0.5), one group, 13 steps with given gradients
- lookahead_sgd_nesterov.safetensors      the same with Nesterov, k=3, a=0.3
- lookahead_adamw.safetensors             torch.optim.AdamW in Lookahead(k=4, a=0.5), 12 steps
- grouped.safetensors + grouped.json  (2) VirTex-style groups (CNN LR / common LR / no-decay regex),
                                          warmup + cosine schedule, Lookahead, 14 steps
- grouped_adamw.safetensors + .json       the same with torch.optim.AdamW in every group
- clipping.safetensors + clipping.json (3) the same with global clip_grad_norm_ active and two steps
                                          with non-finite gradients (skipped, as GradScaler does)
- schedules.json                      (4) every schedule's multipliers over warmup and decay
- virtex_param_groups.json                parameter / element counts per group of upstream's
                                          R50-L1-H1024 bicaptioning model (torch names, meta device)

Each .safetensors holds `init.<path>` (initial parameters), `grad.<t>.<path>` (the gradient given
at step t, 1-based), `param.<t>.<path>` (parameters after step t) and `slow.<path>` (Lookahead slow
weights after the last step). Paths are the burn module paths of the Rust test model
(tests/common/mod.rs), so the no-decay regex sees the same strings on both sides. Everything is
float32 like the Rust side; schedule multipliers are float64 in JSON.

Lookahead, the param groups and the schedules are written here from the formulas of upstream's
virtex/optim/ and scripts/pretrain_virtex.py (see docs/upstream.md); torch.optim.SGD / AdamW and
clip_grad_norm_ are the reference.

Usage:  ~/.venvs/ref/bin/python tools/reference/lookahead.py
"""
from __future__ import annotations

import bisect
import copy
import json
import math
import re
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "crates" / "virtex-optim" / "tests" / "fixtures"

NO_DECAY = r".*textual.(embedding|transformer).*(norm.*|bias)"

# The Rust test model's trainable parameters (burn paths) and shapes, in module order.
TINY = [
    ("visual.cnn.conv1.weight", (4, 2, 3, 3)),
    ("visual.cnn.bn1.weight", (4,)),
    ("visual.cnn.bn1.bias", (4,)),
    ("textual.visual_projection.weight", (4, 6)),
    ("textual.visual_projection.bias", (6,)),
    ("textual.embedding.words.weight", (10, 6)),
    ("textual.embedding.layer_norm.gamma", (6,)),
    ("textual.embedding.layer_norm.beta", (6,)),
    ("textual.transformer.layers.0.linear1.weight", (6, 8)),
    ("textual.transformer.layers.0.linear1.bias", (8,)),
    ("textual.transformer.layers.0.norm1.gamma", (6,)),
    ("textual.transformer.layers.0.norm1.beta", (6,)),
    ("textual.output.bias", (10,)),
]


class Lookahead:
    """Lookahead as upstream `virtex/optim/lookahead.py`: after every k-th inner step p <- a*p + (1-a)*slow; slow <- p."""

    def __init__(self, inner: torch.optim.Optimizer, k: int, alpha: float):
        self.inner, self.k, self.alpha = inner, k, alpha
        self.counter = 0
        self.slow = {
            p: p.detach().clone() for group in inner.param_groups for p in group["params"]
        }

    @torch.no_grad()
    def step(self) -> bool:
        self.inner.step()
        self.counter += 1
        if self.counter < self.k:
            return False
        self.counter = 0
        for group in self.inner.param_groups:
            for p in group["params"]:
                p.mul_(self.alpha).add_(self.slow[p], alpha=1.0 - self.alpha)
                self.slow[p].copy_(p)
        return True


def multiplier(decay: str, step: int, warmup: int, total: int, milestones=(), gamma=0.1) -> float:
    """Upstream's LambdaLR multipliers (spec section 3), clamped at >= 0."""
    if step < warmup:
        m = step / float(max(1, warmup))
    elif decay == "cosine":
        m = math.cos((step - warmup) / (total - warmup) * (math.pi / 2)) ** 2
    elif decay == "linear":
        m = (total - step) / (total - warmup)
    elif decay == "multistep":
        m = gamma ** bisect.bisect_right(list(milestones), step)
    elif decay == "none":
        m = 1.0
    else:
        raise ValueError(decay)
    return max(0.0, m)


def make_params(gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        path: torch.randn(shape, generator=gen, dtype=torch.float32).requires_grad_()
        for path, shape in TINY
    }


def make_grads(gen: torch.Generator, steps: int, scales=None) -> list[dict[str, torch.Tensor]]:
    grads = []
    for t in range(steps):
        scale = 1.0 if scales is None else scales[t]
        grads.append(
            {
                path: torch.randn(shape, generator=gen, dtype=torch.float32) * scale
                for path, shape in TINY
            }
        )
    return grads


def tensors_out(init, grads, trajectory, slow) -> dict[str, torch.Tensor]:
    out = {f"init.{k}": v for k, v in init.items()}
    for t, g in enumerate(grads, start=1):
        out.update({f"grad.{t}.{k}": v for k, v in g.items()})
    for t, p in enumerate(trajectory, start=1):
        out.update({f"param.{t}.{k}": v for k, v in p.items()})
    out.update({f"slow.{k}": v for k, v in slow.items()})
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def snapshot(params):
    return {k: v.detach().clone() for k, v in params.items()}


def single_group_run(name: str, seed: int, steps: int, make_optim, k: int, alpha: float):
    """(1) One param group, constant LR, Lookahead around the inner torch optimizer."""
    gen = torch.Generator().manual_seed(seed)
    params = make_params(gen)
    init = snapshot(params)
    grads = make_grads(gen, steps)
    inner = make_optim(list(params.values()))
    lookahead = Lookahead(inner, k, alpha)
    trajectory = []
    for g in grads:
        for path, p in params.items():
            p.grad = g[path].clone()
        lookahead.step()
        trajectory.append(snapshot(params))
    slow = {path: lookahead.slow[p] for path, p in params.items()}
    save_file(tensors_out(init, grads, trajectory, slow), OUT / f"{name}.safetensors")


def grouped_run(name: str, seed: int, steps: int, config: dict, scales=None, bad_steps=()):
    """(2)/(3) Upstream's training-loop order with one torch param group per parameter."""
    gen = torch.Generator().manual_seed(seed)
    params = make_params(gen)
    init = snapshot(params)
    grads = make_grads(gen, steps, scales)
    for t, kind in bad_steps:
        path = TINY[t % len(TINY)][0]
        grads[t - 1][path].view(-1)[1] = float("nan") if kind == "nan" else float("inf")

    groups, info = [], {}
    for path, p in params.items():
        lr = config["common_lr"]
        group_name = "common"
        if "cnn" in path:  # upstream: `if "cnn" in name`
            lr, group_name = config["cnn_lr"], "visual"
        wd = 0.0 if re.match(config["no_decay"], path) else config["weight_decay"]
        groups.append({"params": [p], "lr": lr, "weight_decay": wd})
        info[path] = {"group": group_name, "lr": lr, "weight_decay": wd}
    if config.get("optimizer", "sgd") == "adamw":
        # upstream's OptimizerFactory: AdamW(betas=(0.9, 0.999)), torch's eps 1e-8.
        inner = torch.optim.AdamW(
            groups, lr=config["common_lr"], betas=(0.9, 0.999), eps=1e-8, foreach=False
        )
    else:
        inner = torch.optim.SGD(groups, lr=config["common_lr"], momentum=0.9, foreach=False)
    lookahead = Lookahead(inner, config["k"], config["alpha"])
    sched = config["schedule"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        inner,
        lambda s: multiplier(sched["decay"], s, sched["warmup"], sched["total"]),
    )

    trajectory, reports = [], []
    for t, g in enumerate(grads, start=1):
        for path, p in params.items():
            p.grad = g[path].clone()
        lrs = {"visual": None, "common": None}
        for group, (path, _) in zip(inner.param_groups, TINY):
            lrs[info[path]["group"]] = group["lr"]
        finite = all(bool(torch.isfinite(p.grad).all()) for p in params.values())
        report = {"iteration": t, "lrs": lrs, "skipped": not finite, "synced": False}
        report["lr_multiplier"] = multiplier(sched["decay"], t - 1, sched["warmup"], sched["total"])
        if finite:
            norm = torch.nn.utils.clip_grad_norm_(
                list(params.values()), config.get("max_norm", float("inf"))
            )
            report["grad_norm"] = float(norm)
            coef = (
                min(1.0, float(config["max_norm"] / (norm + 1e-6)))
                if "max_norm" in config
                else 1.0
            )
            report["clip_coefficient"] = coef
            report["synced"] = lookahead.step()
        else:
            # GradScaler skips optimizer.step() (so the Lookahead counter does not move);
            # the scheduler is stepped anyway.
            report["grad_norm"] = None
            report["clip_coefficient"] = 1.0
        scheduler.step()
        reports.append(report)
        trajectory.append(snapshot(params))
    slow = {path: lookahead.slow[p] for path, p in params.items()}
    save_file(tensors_out(init, grads, trajectory, slow), OUT / f"{name}.safetensors")
    meta = {"config": config, "params": info, "steps": reports}
    (OUT / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")


def schedules():
    """(4) Multipliers of every schedule, warmup and decay, including steps past the end."""
    cases = []
    for decay, warmup, total, milestones, gamma in [
        ("cosine", 4, 20, [], 0.1),
        ("cosine", 0, 10, [], 0.1),
        ("linear", 4, 20, [], 0.1),
        ("multistep", 4, 20, [8, 12, 15], 0.1),
        ("multistep", 3, 20, [5, 5, 9], 0.5),
        ("none", 4, 20, [], 0.1),
        ("cosine", 10000, 500000, [], 0.1),
    ]:
        steps = list(range(0, total + 5)) if total < 1000 else [0, 1, 9999, 10000, 10001, 123456, 255000, 499999, 500000]
        cases.append(
            {
                "decay": decay,
                "warmup_steps": warmup,
                "total_steps": total,
                "milestones": milestones,
                "gamma": gamma,
                "steps": steps,
                "multipliers": [
                    multiplier(decay, s, warmup, total, milestones, gamma) for s in steps
                ],
            }
        )
    (OUT / "schedules.json").write_text(json.dumps(cases, indent=1) + "\n")


def virtex_param_groups():
    """Counts per group of upstream's base model, built from upstream's architecture (docs/upstream.md) on the meta
    device, with upstream's rules applied to torch names."""
    import torchvision

    H, A, F, V, L = 1024, 16, 4096, 10000, 1
    with torch.device("meta"):
        cnn = torchvision.models.resnet50()
        cnn.fc = nn.Identity()

        class Embedding(nn.Module):
            def __init__(self):
                super().__init__()
                self.words = nn.Embedding(V, H, padding_idx=0)
                self.positions = nn.Embedding(30, H)
                self.layer_norm = nn.LayerNorm(H, eps=1e-8)

        class Textual(nn.Module):
            def __init__(self):
                super().__init__()
                self.visual_projection = nn.Linear(2048, H)
                self.embedding = Embedding()
                layer = nn.TransformerDecoderLayer(H, A, F, 0.1, "gelu", batch_first=True)
                self.transformer = nn.TransformerDecoder(layer, L)
                self.output = nn.Linear(H, V)
                self.output.weight = self.embedding.words.weight

        class Visual(nn.Module):
            def __init__(self):
                super().__init__()
                self.cnn = cnn

        class Model(nn.Module):
            def __init__(self):
                super().__init__()
                self.visual = Visual()
                self.textual = Textual()
                self.backward_textual = copy.deepcopy(self.textual)
                self.backward_textual.visual_projection = self.textual.visual_projection
                self.backward_textual.embedding = self.textual.embedding
                self.backward_textual.output = self.textual.output

        model = Model()
    counts: dict[str, dict[str, int]] = {}
    for name, p in model.named_parameters():
        group = "visual" if "cnn" in name else "common"
        decay = "no_decay" if re.match(NO_DECAY, name) else "decay"
        key = f"{group}/{decay}"
        entry = counts.setdefault(key, {"tensors": 0, "elements": 0})
        entry["tensors"] += 1
        entry["elements"] += p.numel()
    total = sum(c["elements"] for c in counts.values())
    (OUT / "virtex_param_groups.json").write_text(
        json.dumps({"model": "bicaptioning_R_50_L1_H1024", "total": total, "groups": counts}, indent=1)
        + "\n"
    )


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    single_group_run(
        "lookahead_sgd", 1, 13,
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=0.01, foreach=False),
        k=5, alpha=0.5,
    )
    single_group_run(
        "lookahead_sgd_nesterov", 2, 13,
        lambda ps: torch.optim.SGD(
            ps, lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=True, foreach=False
        ),
        k=3, alpha=0.3,
    )
    single_group_run(
        "lookahead_adamw", 3, 12,
        lambda ps: torch.optim.AdamW(
            ps, lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, foreach=False
        ),
        k=4, alpha=0.5,
    )
    base = {
        "cnn_lr": 0.2,
        "common_lr": 0.05,
        "weight_decay": 0.02,
        "no_decay": NO_DECAY,
        "k": 5,
        "alpha": 0.5,
    }
    grouped_run(
        "grouped", 4, 14,
        dict(base, schedule={"decay": "cosine", "warmup": 3, "total": 16}),
    )
    grouped_run(
        "grouped_adamw", 6, 14,
        dict(base, optimizer="adamw", schedule={"decay": "cosine", "warmup": 3, "total": 16}),
    )
    # Norms of 13 unit-normal tensors (~10 at scale 1): scales straddle max_norm = 4.
    scales = [0.2, 1.0, 0.3, 2.0, 0.35, 1.5, 0.1, 3.0, 0.5, 1.0, 0.25, 0.8, 2.5, 0.4]
    grouped_run(
        "clipping", 5, 14,
        dict(base, schedule={"decay": "linear", "warmup": 2, "total": 14}, max_norm=4.0),
        scales=scales,
        bad_steps=[(6, "nan"), (9, "inf")],
    )
    schedules()
    virtex_param_groups()
    for f in sorted(OUT.iterdir()):
        print(f"{f.stat().st_size:>8}  {f.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
