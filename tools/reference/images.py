#!/usr/bin/env python3
"""Tiny image files in every colour type, for `virtex-data`'s decoding tests.

Writes crates/virtex-data/tests/fixtures/images/*.{png,jpg} (a few hundred bytes each) and
images.json with, per file, Pillow's RGB8 reading (`Image.open(f).convert("RGB")`, after EXIF
transposition) for comparison.

Usage:  ~/.venvs/ref/bin/python tools/reference/images.py
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "crates" / "virtex-data" / "tests" / "fixtures" / "images"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    h, w = 6, 8
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 30, yy * 40, 255 - xx * 30], axis=-1).astype(np.uint8)
    alpha = (xx * 32 + 10).astype(np.uint8)
    gray = (xx * 20 + yy * 10).astype(np.uint8)
    files = {}
    Image.fromarray(gray, "L").save(OUT / "gray.png")
    Image.fromarray(np.stack([gray, alpha], -1), "LA").save(OUT / "gray_alpha.png")
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(OUT / "rgba.png")
    Image.fromarray(rgb, "RGB").quantize(colors=16, dither=Image.Dither.NONE).save(OUT / "palette.png")
    Image.fromarray((gray.astype(np.uint16) * 257)).save(OUT / "gray16.png")
    Image.fromarray(rgb, "RGB").convert("CMYK").save(OUT / "cmyk.jpg", quality=95)
    Image.fromarray(gray, "L").save(OUT / "gray.jpg", quality=95)
    # EXIF orientation 6 (rotate 90° clockwise to display): stored 8x6, displayed 6x8.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb, "RGB").save(OUT / "exif_rotated.jpg", quality=95, exif=exif.tobytes())
    for path in sorted(OUT.iterdir()):
        if path.suffix not in (".png", ".jpg"):
            continue
        image = ImageOps.exif_transpose(Image.open(path))
        rgb8 = np.asarray(image.convert("RGB"))
        files[path.name] = {"mode": Image.open(path).mode, "height": rgb8.shape[0], "width": rgb8.shape[1],
                            "rgb": rgb8.reshape(-1).tolist()}
    (OUT / "images.json").write_text(json.dumps(files) + "\n")
    print({k: (v["mode"], v["height"], v["width"]) for k, v in files.items()})


if __name__ == "__main__":
    main()
