#!/usr/bin/env python3
"""Reference fixtures for `virtex-backbone`, computed with PyTorch + torchvision.

Writes small files into crates/virtex-backbone/tests/fixtures/ (committed; CI never runs Python):

- resnet_{bottleneck,basic}_tiny.pth           torchvision-layout state_dict (torch.save, zip)
- resnet_bottleneck_tiny.safetensors           the same state_dict as safetensors
- resnet_basic_tiny_hub.pth                    torch-hub backbone layout: no fc, legacy pickle format
- virtex_checkpoint_tiny.pth                   full VirTex checkpoint {"model": {visual.cnn.*, textual.*,
                                               backward_textual.*}, "optimizer", "scheduler", "iteration"}
- resnet_{bottleneck,basic}_tiny_reference.safetensors
      input, eval-mode outputs of every stage + pooled + L2-normalised, train-mode layer4, running
      statistics after one train-mode forward, and gradients of named parameters.

The networks are torchvision's own blocks and `_make_layer`, with the stem width reduced so the
fixtures stay small; every block kind and the downsample path are covered. All weights and
BatchNorm statistics are randomised (the zero-initialised residual BNs would hide bugs).

Usage:  ~/.venvs/ref/bin/python tools/reference/backbone.py
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "crates" / "virtex-backbone" / "tests" / "fixtures"


class NarrowResNet(ResNet):
    """torchvision's ResNet with a configurable stem width (torchvision hard-codes 64)."""

    def __init__(self, block, layers, stem: int):
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes = stem
        self.dilation = 1
        self.groups = 1
        self.base_width = 64
        self.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, stem, layers[0])
        self.layer2 = self._make_layer(block, stem * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, stem * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, stem * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(stem * 8 * block.expansion, 10)

    def stages(self, x):
        stem = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        l1 = self.layer1(stem)
        l2 = self.layer2(l1)
        l3 = self.layer3(l2)
        l4 = self.layer4(l3)
        return {"stem": stem, "layer1": l1, "layer2": l2, "layer3": l3, "layer4": l4}


def randomise(model: nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.BatchNorm2d):
                c = module.num_features
                module.weight.copy_(0.5 + torch.rand(c, generator=generator))
                module.bias.copy_(0.1 * torch.randn(c, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(c, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(c, generator=generator))
                module.num_batches_tracked.fill_(7)
            elif isinstance(module, nn.Conv2d):
                # Keep the Kaiming fan-out scale but draw fresh values from our generator.
                fan_out = module.out_channels * module.kernel_size[0] * module.kernel_size[1]
                std = (2.0 / fan_out) ** 0.5
                module.weight.copy_(std * torch.randn(module.weight.shape, generator=generator))
            elif isinstance(module, nn.Linear):
                module.weight.copy_(0.02 * torch.randn(module.weight.shape, generator=generator))
                module.bias.zero_()


GRAD_KEYS = {
    "bottleneck": ["conv1.weight", "bn1.weight", "layer1.0.conv3.weight", "layer1.0.bn3.bias",
                   "layer4.0.conv2.weight", "layer4.0.downsample.0.weight",
                   "layer4.0.downsample.1.weight"],
    "basic": ["conv1.weight", "layer1.0.conv2.weight", "layer2.0.downsample.0.weight",
              "layer4.0.bn2.weight"],
}


def reference(kind: str, model: NarrowResNet, generator: torch.Generator) -> dict[str, torch.Tensor]:
    # Non-square input catches H/W mix-ups; layer4 comes out 2×2.
    images = torch.randn(2, 3, 64, 48, generator=generator)
    tensors = {"input": images}

    model.eval()
    with torch.no_grad():
        stages = model.stages(images)
        for name, value in stages.items():
            tensors[f"eval.{name}"] = value
        pooled = torch.flatten(model.avgpool(stages["layer4"]), 1)
        tensors["eval.pooled"] = pooled
        tensors["eval.pooled_l2"] = F.normalize(pooled, dim=1)

    # Train mode: batch statistics, running-statistic update, gradients.
    train_model = copy.deepcopy(model)
    train_model.train()
    weights = torch.randn(stages["layer4"].shape, generator=generator)
    tensors["train.loss_weights"] = weights
    out = train_model.stages(images)["layer4"]
    tensors["train.layer4"] = out.detach()
    (out * weights).sum().backward()
    state = dict(train_model.named_parameters())
    for key in GRAD_KEYS[kind]:
        tensors[f"grad.{key}"] = state[key].grad.detach()
    for key, value in train_model.state_dict().items():
        if key.endswith("running_mean") or key.endswith("running_var"):
            tensors[f"running.{key}"] = value.detach()
    return {k: v.contiguous().float() for k, v in tensors.items()}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(20210101)

    bottleneck = NarrowResNet(Bottleneck, [2, 1, 1, 1], stem=4)
    randomise(bottleneck, generator)
    basic = NarrowResNet(BasicBlock, [2, 1, 1, 1], stem=8)
    randomise(basic, generator)

    # (a) torchvision state_dict saved by torch.save (zip format, with fc and num_batches_tracked).
    torch.save(bottleneck.state_dict(), OUT / "resnet_bottleneck_tiny.pth")
    torch.save(basic.state_dict(), OUT / "resnet_basic_tiny.pth")
    # (b) the same as safetensors.
    save_file({k: v.contiguous() for k, v in bottleneck.state_dict().items()},
              OUT / "resnet_bottleneck_tiny.safetensors")
    # (c) the torch-hub backbone layout: plain torchvision keys, no fc; legacy (pre-1.6) format,
    #     as older releases were written.
    hub = {k: v for k, v in basic.state_dict().items() if not k.startswith("fc.")}
    torch.save(hub, OUT / "resnet_basic_tiny_hub.pth", _use_new_zipfile_serialization=False)
    # (d) a full VirTex checkpoint: CNN under visual.cnn. (fc is Identity there, so no fc keys),
    #     textual tensors duplicated under backward_textual., plus optimizer/scheduler/iteration.
    hidden = 16
    cnn = {f"visual.cnn.{k}": v for k, v in bottleneck.state_dict().items() if not k.startswith("fc.")}
    words = torch.randn(50, hidden, generator=generator)
    textual = {
        "textual.visual_projection.weight": torch.randn(hidden, 128, generator=generator),
        "textual.visual_projection.bias": torch.zeros(hidden),
        "textual.embedding.words.weight": words,
        "textual.output.weight": words,
        "textual.output.bias": torch.zeros(50),
    }
    model_state = {**cnn, **textual,
                   **{k.replace("textual.", "backward_textual.", 1): v for k, v in textual.items()}}
    params = [v for k, v in cnn.items() if "running" not in k and "num_batches" not in k]
    optimizer = torch.optim.SGD([p.clone().requires_grad_() for p in params], lr=0.2, momentum=0.9)
    for p in optimizer.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    optimizer.step()
    torch.save({"model": model_state, "optimizer": optimizer.state_dict(),
                "scheduler": {"last_epoch": 10, "base_lrs": [0.2]}, "iteration": 10},
               OUT / "virtex_checkpoint_tiny.pth")

    save_file(reference("bottleneck", bottleneck, generator),
              OUT / "resnet_bottleneck_tiny_reference.safetensors")
    save_file(reference("basic", basic, generator), OUT / "resnet_basic_tiny_reference.safetensors")

    for path in sorted(OUT.iterdir()):
        print(f"{path.relative_to(ROOT)}: {os.path.getsize(path)} bytes")
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")


if __name__ == "__main__":
    main()
