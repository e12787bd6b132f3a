#!/usr/bin/env python3
"""BatchNorm over groups of 32 with gradients averaged over 64: upstream's DDP step, in PyTorch.

Upstream trains with DistributedDataParallel on 8 GPUs x 32 images (`scripts/pretrain_virtex.py`):
each rank's BatchNorm normalises its own 32 images, and DDP averages the gradients, so the update
is the mean of the per-rank losses' gradients. This script runs that step for 2 ranks x 32 = 64
images on the tiny bicaptioning model of `train_step.py` (same initial weights,
`train_step_init.pth`), emulated on one process: for each rank's 32 images, forward in train mode
and backward of `loss / ranks`, which accumulates exactly DDP's averaged gradient. Then upstream's
clip, Lookahead(SGD) and schedule, for 6 iterations.

BatchNorm running statistics: with DDP every rank updates its own buffers from its 32 images and
rank 0's are the ones broadcast and saved; here (and in our accumulation) the buffers are updated
once per group, in order. The fixture records the latter (what `virtex-train` computes); the
difference is documented with `optim.batch_norm_batch`.

Writes (CI never runs Python; the file is committed):

crates/virtex-train/tests/fixtures/batch_norm_groups_reference.safetensors
    input.images [64,3,32,32], input.caption_tokens / input.noitpac_tokens [64,T] (i64),
    input.caption_lengths [64] (i64)
    step.loss / step.captioning_forward / step.captioning_backward [6]: each iteration's loss
        (mean over the groups), before that iteration's update
    step.grad_norm [6], step.lr_multiplier [6] (float64)
    final.<torch key>: every parameter and running statistic after 6 iterations
    metadata "settings": train_step.py's settings plus batch_size, batch_norm_batch, iterations

Usage:  ~/.venvs/ref/bin/python tools/reference/batch_norm_groups.py
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lookahead import multiplier  # noqa: E402
from textual import EOS, SOS, pad_reversed  # noqa: E402
from train_step import SETTINGS, build_model, optimizer_and_scheduler  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "crates" / "virtex-train" / "tests" / "fixtures"

ITERATIONS = 6
BATCH_SIZE = 64
BATCH_NORM_BATCH = 32


def batch(generator: torch.Generator):
    images = torch.randn(BATCH_SIZE, 3, 32, 32, generator=generator)
    captions = []
    for _ in range(BATCH_SIZE):
        length = int(torch.randint(1, 9, (1,), generator=generator))
        # Word ids 3..49 (0 is <unk>/padding, 1 and 2 are SOS and EOS).
        words = torch.randint(3, 50, (length,), generator=generator).tolist()
        captions.append([SOS, *words, EOS])
    return (images, *pad_reversed(captions))


def train(model, images, caption, noitpac, lengths, groups_of: int):
    model.train()
    inner, optimizer, scheduler = optimizer_and_scheduler(model)
    ranks = BATCH_SIZE // groups_of
    record = {k: [] for k in ("loss", "captioning_forward", "captioning_backward", "grad_norm",
                              "lr_multiplier")}
    for iteration in range(1, ITERATIONS + 1):
        mult = multiplier(SETTINGS["lr_decay_name"], iteration - 1, SETTINGS["warmup_steps"],
                          SETTINGS["num_iterations"])
        inner.zero_grad()
        totals = [0.0, 0.0, 0.0]
        for rank in range(ranks):
            part = slice(rank * groups_of, (rank + 1) * groups_of)
            loss, forward, backward = model(images[part], caption[part], noitpac[part],
                                            lengths[part])
            # DDP averages the ranks' gradients: the gradient of the mean of their losses.
            (loss / ranks).backward()
            for i, value in enumerate((loss, forward, backward)):
                totals[i] += float(value.detach()) / ranks
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), SETTINGS["clip_grad_norm"])
        optimizer.step()
        scheduler.step()
        for key, value in zip(("loss", "captioning_forward", "captioning_backward"), totals):
            record[key].append(value)
        record["grad_norm"].append(float(norm))
        record["lr_multiplier"].append(mult)
        print(f"iteration {iteration}: loss {totals[0]:.6f} grad norm {float(norm):.4f}")
    return record


def main() -> None:
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    model = build_model(torch.Generator().manual_seed(0))
    init = torch.load(OUT / "train_step_init.pth", weights_only=True)["model"]
    model.load_state_dict(init)
    images, caption, noitpac, lengths = batch(torch.Generator().manual_seed(20261205))

    # How much the grouping matters: the same step with BatchNorm over all 64 images.
    whole = build_model(torch.Generator().manual_seed(0))
    whole.load_state_dict(init)
    whole_loss = train(whole, images, caption, noitpac, lengths, BATCH_SIZE)["loss"]

    record = train(model, images, caption, noitpac, lengths, BATCH_NORM_BATCH)
    gap = max(abs(a - b) / abs(b) for a, b in zip(whole_loss, record["loss"]))
    print(f"BatchNorm over 64 instead of 2 x 32: losses differ by up to {gap:.2e} relative")

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
    for key, value in model.state_dict().items():
        if key.startswith(shared) or key.endswith("num_batches_tracked"):
            continue
        if key == "textual.output.weight":  # tied: it is textual.embedding.words.weight
            continue
        tensors[f"final.{key}"] = value.detach().clone()
    settings = dict(SETTINGS, batch_size=BATCH_SIZE, batch_norm_batch=BATCH_NORM_BATCH,
                    iterations=ITERATIONS)
    path = OUT / "batch_norm_groups_reference.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, path,
              metadata={"settings": json.dumps(settings, sort_keys=True)})
    print(f"{path.relative_to(ROOT)}: {os.path.getsize(path)} bytes; torch {torch.__version__}")


if __name__ == "__main__":
    main()
