#!/usr/bin/env python3
"""The Python side of `cargo bench --bench data_pipeline`: PIL decode + torchvision transforms.

Same work per image as the Rust bench: decode a 640×480 quality-90 JPEG (the embedded sample's
photographs, resized and re-encoded in memory), RandomResizedCrop(224, scale 0.2–1) →
RandomHorizontalFlip → ColorJitter(0.4, 0.4, 0.4, 0.1) applied with p 0.8 → ToTensor →
Normalize(ImageNet), on one thread, reported in images/s per core; plus decode alone.

Usage:  ~/.venvs/ref/bin/python tools/bench/data_pipeline.py [--seconds 5]
"""
from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import torch
import torchvision.transforms as T
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "crates" / "virtex-data" / "sample"


def jpegs() -> list[bytes]:
    doc = json.loads((SAMPLE / "annotations" / "captions_train2017.json").read_text())
    out = []
    for im in doc["images"]:
        image = Image.open(SAMPLE / "train2017" / im["file_name"]).convert("RGB").resize((640, 480), Image.BILINEAR)
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def rate(fn, files: list[bytes], seconds: float) -> float:
    for b in files:  # warm-up
        fn(b)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn(files[n % len(files)])
        n += 1
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    files = jpegs()
    train = T.Compose([
        T.RandomResizedCrop(224, scale=(0.2, 1.0), ratio=(0.75, 4 / 3)),
        T.RandomHorizontalFlip(0.5),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.ToTensor(),
        T.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    ])

    def decode(b: bytes):
        return Image.open(io.BytesIO(b)).convert("RGB")

    def pipeline(b: bytes):
        return train(decode(b))

    print(f"decode_640x480_jpeg: {rate(decode, files, args.seconds):.0f} images/s (1 thread)")
    print(f"decode_train_transforms_normalize_224: {rate(pipeline, files, args.seconds):.0f} images/s (1 thread)")


if __name__ == "__main__":
    main()
