#!/usr/bin/env python3
"""Whole-training-step reference for `examples/pretrain_coco` (issue 5, "Parity"), in PyTorch.

Ten iterations of upstream's pretraining step (`scripts/pretrain_virtex.py`, spec section 3) on
a tiny bicaptioning model and one fixed batch:

    zero_grad → forward in train mode (BatchNorm batch statistics, dropout 0)
              → loss = captioning_forward + captioning_backward → backward
              → clip_grad_norm_(model.parameters(), 10)             (global L2 norm)
              → Lookahead(SGD).step()                                 (k = 5, α = 0.5)
              → scheduler.step()                                      (warmup, then cosine)

with upstream's parameter groups (`virtex/factories.py::OptimizerFactory`): one torch param
group per parameter, LR `CNN_LR` when "cnn" is in the name and `LR` otherwise, weight decay 0
when `re.match(NO_DECAY, name)`, SGD momentum 0.9, nesterov False, dampening 0.

The model is `textual.py`'s tiny one (NarrowResNet bottleneck [1,1,1,1] with a 4-channel stem →
128 channels; textual head L1 H16 A2 F64, vocabulary 50, 30 positions), every weight randomised.
The rules are upstream's; the magnitudes are not, for two reasons:
- Upstream's CNN LR of 0.2 moves this 33K-parameter CNN by tens of percent per step: the run
  becomes chaotic (torch's own float32 and float64 runs end 2 % apart after ten steps), so no
  implementation could match it within 1e-3. With CNN LR 0.01 and LR 0.02, a 3e-7 relative
  perturbation of the initial weights grows at most ~6x over the ten steps (torch float64, 12
  random perturbations).
- Upstream's textual LR (0.001) and weight decay (1e-4) would leave the textual head and the
  no-decay group indistinguishable from "not updated" in ten steps; the test must see each move.
The clip is upstream's 10, which this run's gradient norms cross both ways: clipping is active in
iterations 1-6 and 8, not in 7, 9 and 10.

Writes (CI never runs Python; both files are committed):

crates/virtex-train/tests/fixtures/
  train_step_init.pth            official layout {"model": state_dict} (shared textual tensors
                                 duplicated under backward_textual.*, as upstream saves them)
  train_step_reference.safetensors
      input.images [4,3,64,48], input.caption_tokens / input.noitpac_tokens [4,T] (i64),
      input.caption_lengths [4] (i64)
      step.loss / step.captioning_forward / step.captioning_backward [10]: each iteration's
          loss, computed before that iteration's update
      step.grad_norm [10]: global gradient norm before clipping
      step.lr_multiplier [10] (float64): schedule multiplier each iteration ran with
      final.<torch key>: every parameter and BatchNorm running statistic after 10 iterations
          (shared tensors once, under textual.*; the tied output.weight left out)
      metadata "settings": the hyper-parameters below, as JSON

Usage:  ~/.venvs/ref/bin/python tools/reference/train_step.py
"""
from __future__ import annotations

import copy
import json
import os
import re
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lookahead import Lookahead, multiplier  # noqa: E402
from backbone import NarrowResNet, randomise  # noqa: E402
from textual import (  # noqa: E402
    EOS, SOS, CaptioningModel, TextualHead, pad_reversed, randomise_textual)
from torchvision.models.resnet import Bottleneck  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "crates" / "virtex-train" / "tests" / "fixtures"

ITERATIONS = 10
SETTINGS = {
    "cnn_lr": 0.01,           # upstream OPTIM.CNN_LR is 0.2
    "lr": 0.02,               # upstream OPTIM.LR is 0.001
    "weight_decay": 0.01,     # upstream 1e-4
    "no_decay": r".*textual.(embedding|transformer).*(norm.*|bias)",  # upstream OPTIM.NO_DECAY
    "sgd_momentum": 0.9,
    "sgd_nesterov": False,
    "lookahead_steps": 5,
    "lookahead_alpha": 0.5,
    "warmup_steps": 3,
    "num_iterations": ITERATIONS,
    "lr_decay_name": "cosine",
    "clip_grad_norm": 10.0,    # upstream OPTIM.CLIP_GRAD_NORM
}


def param_groups(model: torch.nn.Module) -> list[dict]:
    """`OptimizerFactory.from_config`: one group per parameter (named_parameters de-duplicates
    the shared tensors, so each appears once, under its textual.* name)."""
    groups = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr = SETTINGS["cnn_lr"] if "cnn" in name else SETTINGS["lr"]
        wd = 0.0 if re.match(SETTINGS["no_decay"], name) else SETTINGS["weight_decay"]
        groups.append({"params": [param], "lr": lr, "weight_decay": wd, "name": name})
    return groups


def build_model(generator: torch.Generator) -> CaptioningModel:
    """`textual.py`'s tiny bicaptioning model, every weight randomised; the two decoder stacks
    get different values (upstream's deepcopy starts them equal)."""
    cnn = NarrowResNet(Bottleneck, [1, 1, 1, 1], stem=4)
    randomise(cnn, generator)
    cnn.fc = torch.nn.Identity()
    textual = TextualHead(128, 50, 16, 1, 2, 64, dropout=0.0, max_caption_length=30)
    model = CaptioningModel(cnn, textual, backward=True)
    randomise_textual(model.textual, generator)
    randomise_textual(model.backward_textual.transformer, generator)
    return model


def batch(generator: torch.Generator):
    images = torch.randn(4, 3, 64, 48, generator=generator)
    # Different lengths (right padding in three rows) and a real <unk> (id 0) inside row 0,
    # which the loss ignores as a target and the embedding zeroes as an input.
    captions = [
        [SOS, 11, 23, 0, 7, 42, 5, EOS],
        [SOS, 30, 4, EOS],
        [SOS, 17, 17, 9, 48, EOS],
        [SOS, 6, EOS],
    ]
    return (images, *pad_reversed(captions))


def optimizer_and_scheduler(model: CaptioningModel):
    """Upstream's optimizer for `model` with SETTINGS: Lookahead(SGD) over `param_groups`, and
    the warmup + decay schedule. Returns (inner SGD, Lookahead, scheduler)."""
    groups = param_groups(model)
    for group in groups:
        group.pop("name")
    inner = torch.optim.SGD(groups, lr=SETTINGS["lr"], momentum=SETTINGS["sgd_momentum"],
                            nesterov=SETTINGS["sgd_nesterov"], foreach=False)
    optimizer = Lookahead(inner, SETTINGS["lookahead_steps"], SETTINGS["lookahead_alpha"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        inner,
        lambda s: multiplier(SETTINGS["lr_decay_name"], s, SETTINGS["warmup_steps"],
                             SETTINGS["num_iterations"]),
    )
    return inner, optimizer, scheduler


def train(model: CaptioningModel, images, caption, noitpac, lengths, verbose=False):
    """ITERATIONS steps of upstream's loop; returns the per-iteration records."""
    model.train()
    inner, optimizer, scheduler = optimizer_and_scheduler(model)
    record = {k: [] for k in ("loss", "captioning_forward", "captioning_backward", "grad_norm",
                              "lr_multiplier")}
    for iteration in range(1, ITERATIONS + 1):
        mult = multiplier(SETTINGS["lr_decay_name"], iteration - 1, SETTINGS["warmup_steps"],
                          SETTINGS["num_iterations"])
        assert abs(scheduler.get_last_lr()[-1] - SETTINGS["lr"] * mult) < 1e-12
        inner.zero_grad()
        loss, forward, backward = model(images, caption, noitpac, lengths)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), SETTINGS["clip_grad_norm"])
        optimizer.step()
        scheduler.step()
        for key, value in [("loss", loss), ("captioning_forward", forward),
                           ("captioning_backward", backward), ("grad_norm", norm)]:
            record[key].append(float(value.detach()))
        record["lr_multiplier"].append(mult)
        if verbose:
            clipped = float(norm) > SETTINGS["clip_grad_norm"]
            print(f"iteration {iteration:2}: loss {float(loss):.6f} (fwd {float(forward):.6f}, "
                  f"bwd {float(backward):.6f}) grad norm {float(norm):.4f}"
                  f"{' (clipped)' if clipped else ''} lr mult {mult:.4f}")
    return record


def conditioning(model: CaptioningModel, inputs, size=3e-7, trials=12) -> None:
    """How much a tiny relative perturbation of the initial weights grows over the run (float64),
    and how far torch's own float32 run ends from float64: the headroom for a 1e-3 test."""
    def losses(m, dtype):
        images, *rest = inputs
        return torch.tensor(train(m.to(dtype), images.to(dtype), *rest)["loss"], dtype=dtype)

    exact = losses(copy.deepcopy(model), torch.float64)
    single = losses(copy.deepcopy(model), torch.float32).double()
    growth = []
    for trial in range(trials):
        perturbed = copy.deepcopy(model).double()
        noise = torch.Generator().manual_seed(1000 + trial)
        with torch.no_grad():
            for p in perturbed.parameters():
                p.mul_(1 + size * torch.randn(p.shape, generator=noise, dtype=p.dtype))
        rel = ((losses(perturbed, torch.float64) - exact).abs() / exact).max().item()
        growth.append(rel / size)
    f32 = ((single - exact).abs() / exact).max().item()
    print(f"conditioning: torch float32 vs float64 losses {f32:.1e} relative; a {size:g} "
          f"perturbation grows up to {max(growth):.1f}x ({trials} trials)")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    generator = torch.Generator().manual_seed(20240901)
    model = build_model(generator)
    images, caption, noitpac, lengths = batch(generator)

    init_state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save({"model": init_state}, OUT / "train_step_init.pth")
    conditioning(model, (images, caption, noitpac, lengths))

    record = train(model, images, caption, noitpac, lengths, verbose=True)
    tensors = {
        "input.images": images,
        "input.caption_tokens": caption,
        "input.noitpac_tokens": noitpac,
        "input.caption_lengths": lengths,
        "step.lr_multiplier": torch.tensor(record.pop("lr_multiplier"), dtype=torch.float64),
    }
    for key, values in record.items():
        tensors[f"step.{key}"] = torch.tensor(values, dtype=torch.float32)
    shared = ("backward_textual.visual_projection.", "backward_textual.embedding.",
              "backward_textual.output.")
    final = 0
    for key, value in model.state_dict().items():
        if key.startswith(shared) or key.endswith("num_batches_tracked"):
            continue
        if key == "textual.output.weight":  # tied: it is textual.embedding.words.weight
            continue
        tensors[f"final.{key}"] = value.detach().clone()
        final += 1
    save_file({k: v.contiguous() for k, v in tensors.items()},
              OUT / "train_step_reference.safetensors",
              metadata={"settings": json.dumps(SETTINGS, sort_keys=True)})

    clipped = [i + 1 for i, n in enumerate(record["grad_norm"]) if n > SETTINGS["clip_grad_norm"]]
    print(f"clipped iterations: {clipped}")
    print(f"{len(param_groups(model))} parameters, one group each; {final} final tensors")
    for path in sorted(OUT.glob("train_step_*")):
        print(f"{path.relative_to(ROOT)}: {os.path.getsize(path)} bytes")
    print(f"torch {torch.__version__}")


if __name__ == "__main__":
    main()
