#!/usr/bin/env python3
"""End-to-end check: `virtex features` on a torchvision ResNet-50 `.pth` against torchvision.

1. Builds torchvision's resnet50 (VirTex's zero_init_residual=True), randomises every BatchNorm
   (weights, biases and running statistics) so no block is an identity, saves the state_dict with
   torch.save.
2. Writes two PNG images: one exactly 224×224 (resize and crop are no-ops) and one 320×240
   (exercises the antialiased bilinear resize to 298×224 and the centre crop).
3. Runs `target/release/virtex features` on them (layer4 grid and L2-normalised pooled features).
4. Compares with torchvision's layer4 output on the same preprocessing
   (PIL → Resize(224, antialias) → CenterCrop(224) → ToTensor → Normalize).

Usage: cargo build --release -p virtex-cli && ~/.venvs/ref/bin/python tools/reference/check_resnet50_features.py
Prints the max relative error (max |Δ| / max |reference|) per image and output kind.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from safetensors import safe_open
from torchvision import transforms

ROOT = Path(__file__).resolve().parents[2]
BINARY = ROOT / "target" / "release" / "virtex"


def main() -> int:
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None, zero_init_residual=True)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                c = module.num_features
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    model.eval()

    work = Path(tempfile.mkdtemp(prefix="virtex-r50-"))
    weights = work / "resnet50.pth"
    torch.save(model.state_dict(), weights)

    rng = np.random.default_rng(0)
    images = work / "images"
    images.mkdir()
    # Smooth random images (a blurred noise field) look more like photographs than white noise.
    for name, (w, h) in {"a_square.png": (224, 224), "b_landscape.png": (320, 240)}.items():
        noise = rng.random((h // 8 + 1, w // 8 + 1, 3)) * 255
        img = Image.fromarray(noise.astype(np.uint8)).resize((w, h), Image.BICUBIC)
        img.save(images / name)

    preprocess = transforms.Compose([
        transforms.Resize(224, antialias=True),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])
    files = sorted(images.iterdir())
    batch = torch.stack([preprocess(Image.open(f).convert("RGB")) for f in files])
    with torch.no_grad():
        x = model.maxpool(model.relu(model.bn1(model.conv1(batch))))
        grid = model.layer4(model.layer3(model.layer2(model.layer1(x))))
        pooled = F.normalize(torch.flatten(model.avgpool(grid), 1), dim=1)

    results = {}
    for kind, extra, reference in [("grid", [], grid), ("pooled_l2", ["--l2-normalize"], pooled)]:
        out = work / f"{kind}.safetensors"
        cmd = [str(BINARY), "features", "--weights", str(weights), "--images", str(images),
               "--short-side", "224", "--crop", "224", "--batch-size", "2", "--out", str(out), *extra]
        subprocess.run(cmd, check=True)
        with safe_open(str(out), "pt") as f:
            ours = f.get_tensor("features")
            names = json.loads(f.metadata()["files"])
        assert [Path(n).name for n in names] == [f.name for f in files], names
        for i, f in enumerate(files):
            diff = (ours[i] - reference[i]).abs().max().item()
            scale = reference[i].abs().max().item()
            results[f"{kind}/{f.name}"] = diff / scale
    for key, value in results.items():
        print(f"{key}: max relative error {value:.3e}")
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}; files in {work}")
    return 0 if results["grid/a_square.png"] <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
