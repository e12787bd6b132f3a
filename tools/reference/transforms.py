#!/usr/bin/env python3
"""Parity fixtures for the image transforms of `virtex-data`.

- Colour jitter: torchvision's functional tensor ops on a uint8 CHW tensor (the semantics
  albumentations' ColorJitter mimics): adjust_brightness / contrast / saturation / hue with fixed
  factors, and a full jitter with a fixed order.
- Resizing: Pillow's bilinear resize of a crop box (fast_image_resize's convolution filters follow
  Pillow's), torchvision's Resize(shorter side) + CenterCrop on a PIL image.

Writes crates/virtex-data/tests/fixtures/transforms_cases.json (small; committed).

Usage:  ~/.venvs/ref/bin/python tools/reference/transforms.py
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "crates" / "virtex-data" / "tests" / "fixtures" / "transforms_cases.json"


def hwc_list(t: torch.Tensor) -> list[int]:
    """CHW uint8 tensor -> flat HWC list (the layout of image::RgbImage)."""
    return t.permute(1, 2, 0).reshape(-1).tolist()


def main() -> None:
    rng = np.random.default_rng(0)
    # Smooth-ish content plus noise, so hue/saturation see varied colours and some grays.
    h, w = 9, 12
    base = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    base[0, :4] = [[0, 0, 0], [255, 255, 255], [128, 128, 128], [10, 10, 10]]
    base[1, :3] = [[255, 0, 0], [0, 255, 0], [0, 0, 255]]
    t = torch.from_numpy(base).permute(2, 0, 1).contiguous()
    ops = []
    for name, fn, factors in [
        ("brightness", F.adjust_brightness, [0.6, 0.93, 1.37, 1.4]),
        ("contrast", F.adjust_contrast, [0.6, 0.81, 1.23, 1.4]),
        ("saturation", F.adjust_saturation, [0.6, 0.77, 1.25, 1.4]),
        ("hue", F.adjust_hue, [-0.1, -0.037, 0.02, 0.1]),
    ]:
        for f in factors:
            ops.append({"op": name, "factor": f, "output": hwc_list(fn(t, f))})
    jitters = []
    for order, factors in [([2, 0, 3, 1], [1.21, 0.74, 1.33, -0.06]), ([3, 1, 0, 2], [0.66, 1.3, 0.9, 0.09])]:
        out = t
        for i in order:
            if i == 0:
                out = F.adjust_brightness(out, factors[0])
            elif i == 1:
                out = F.adjust_contrast(out, factors[1])
            elif i == 2:
                out = F.adjust_saturation(out, factors[2])
            else:
                out = F.adjust_hue(out, factors[3])
        jitters.append({"order": order, "brightness": factors[0], "contrast": factors[1],
                        "saturation": factors[2], "hue": factors[3], "output": hwc_list(out)})

    big = rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
    big = (big.astype(np.float32) * 0.5 + np.linspace(0, 127, 40)[None, :, None]).astype(np.uint8)
    pil = Image.fromarray(big)
    resizes = []
    for left, top, cw, ch, ow, oh in [(5, 3, 25, 20, 16, 16), (0, 0, 40, 30, 13, 11), (10, 4, 12, 9, 24, 18)]:
        out = pil.resize((ow, oh), Image.BILINEAR, box=(left, top, left + cw, top + ch))
        resizes.append({"crop": [left, top, cw, ch], "size": [ow, oh],
                        "output": np.asarray(out).reshape(-1).tolist()})
    val = F.center_crop(F.resize(pil, 16, interpolation=F.InterpolationMode.BILINEAR), 16)
    doc = {
        "generator": "tools/reference/transforms.py", "torch": torch.__version__,
        "image": {"height": h, "width": w, "data": base.reshape(-1).tolist()},
        "ops": ops, "jitters": jitters,
        "resize_source": {"height": 30, "width": 40, "data": big.reshape(-1).tolist()},
        "resizes": resizes,
        "val_16": {"height": val.height, "width": val.width, "data": np.asarray(val).reshape(-1).tolist()},
    }
    OUT.write_text(json.dumps(doc) + "\n")
    print("wrote", OUT, OUT.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
