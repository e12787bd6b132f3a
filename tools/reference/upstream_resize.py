#!/usr/bin/env python3
"""Fixtures for `ResizeMode::Upstream` of `virtex-data`: upstream's resizes and crops, as
albumentations runs them on OpenCV, on real JPEGs of the repository.

Upstream (`virtex/factories.py`, `requirements.txt`: `albumentations>=0.5.0`) builds its pipelines
from albumentations' `SmallestMaxSize`, `CenterCrop`, `RandomResizedCrop` and `Resize`, which call
`cv2.resize(..., interpolation=cv2.INTER_LINEAR)` (no anti-aliasing). This script runs those
transforms (albumentations 0.5.2, unpacked from its wheel; the installed albumentations 2.x gives
the same sizes and offsets) and checks them against a direct transcription:

- SmallestMaxSize(s): `scale = s / min(h, w)`, each side `py3round(side * scale)` (Python's
  round half to even), then `cv2.resize` (skipped when `scale == 1`).
- CenterCrop(s): offsets `(in - s) // 2`.
- RandomResizedCrop / Resize: `cv2.resize` of the (integer) crop box.

JPEG decoders differ (the `image` crate and libjpeg-turbo disagree by up to 4 levels on colour
images), so the decoded source pixels go into the fixture and the Rust test resizes exactly them:

- `val/*`: `val2017/000000000011.jpg` (400 x 300, grayscale, 4:3 like COCO's 640 x 480; stored as
  one plane, the RGB image has three equal channels): SmallestMaxSize(224) -> 299 x 224 (torchvision
  298), CenterCrop(224) at column 37 (torchvision 38).
- `colour/*`: a 192 x 144 region of `train2017/000000000003.jpg`: a RandomResizedCrop box shrunk to
  64 x 64, a small box enlarged 3x to 69 x 51, an exact 2x shrink (OpenCV's INTER_AREA path) and a
  Resize (upstream's `global_resize`) to 64 x 64.
- `noise/{i}/*`: `cv2.resize` of small random images between random sizes of 1 to 24 pixels, and
  edge cases (one-pixel images and outputs, exact 2x and 3x), for the borders and the rounding.

Writes crates/virtex-data/tests/fixtures/upstream_resize.safetensors (0.41 MB; committed). The
committed file was made with opencv-python-headless 4.10.0.84 (`PYTHONPATH` to a `pip install
--target` of it); 5.1.0.95 writes the same tensors.

With `--features DUMP`, instead measures how much the resize mode moves ResNet-50 features: DUMP is
what `cargo run --release -p virtex-data --example dump_resize_modes`
writes (the sample JPEGs decoded by the `image` crate, and their SmallestMaxSize(224) +
CenterCrop(224) and RandomResizedCrop(224) outputs in both resize modes).

Usage:
  ~/.venvs/ref/bin/pip install opencv-python-headless
  ~/.venvs/ref/bin/pip download albumentations==0.5.2 --no-deps -d /tmp/alb052
  (cd /tmp/alb052 && unzip -oq albumentations-0.5.2-py3-none-any.whl)
  ~/.venvs/ref/bin/python tools/reference/upstream_resize.py --albumentations /tmp/alb052
  ~/.venvs/ref/bin/python tools/reference/upstream_resize.py --features /tmp/resize_modes.safetensors
"""
from __future__ import annotations

import argparse
import os
import sys
import types
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from safetensors.numpy import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]
CRATE = ROOT / "crates" / "virtex-data"
SAMPLE = CRATE / "sample"
OUT = CRATE / "tests" / "fixtures" / "upstream_resize.safetensors"

VAL_IMAGE = SAMPLE / "val2017" / "000000000011.jpg"
COLOUR_IMAGE = SAMPLE / "train2017" / "000000000003.jpg"
COLOUR_REGION = (130, 80, 192, 144)  # left, top, width, height in the decoded photo
RRC_BOX = (11, 6, 173, 131)  # left, top, width, height in the region; shrunk to 64 x 64
UPSCALE_BOX = (97, 41, 23, 17)  # enlarged 3x to 69 x 51


def import_albumentations(path: Path):
    """albumentations 0.5.x from an unpacked wheel, with its unused heavy imports stubbed."""
    sys.path.insert(0, str(path))

    def stub(name: str) -> None:
        mod = types.ModuleType(name)
        mod.__all__ = []
        mod.__path__ = []
        mod.__getattr__ = lambda attr: None
        sys.modules[name] = mod

    # imgaug (needs numpy < 2) and scikit-image back transforms this script does not use.
    for name in ["albumentations.imgaug", "albumentations.imgaug.transforms", "skimage",
                 "skimage.measure", "skimage.exposure", "skimage.transform", "skimage.color",
                 "skimage.util"]:
        stub(name)
    import albumentations as A  # noqa: E402

    assert A.__version__.startswith(("0.4", "0.5", "1.")), A.__version__
    return A


def py3round(number: float) -> int:
    """albumentations 0.5's rounding (Python 3's round, half to even)."""
    if abs(round(number) - number) == 0.5:
        return int(2.0 * round(number / 2.0))
    return int(round(number))


def smallest_max_size(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    scale = size / float(min(w, h))
    if scale == 1.0:
        return img
    nh, nw = py3round(h * scale), py3round(w * scale)
    return cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    y, x = (h - size) // 2, (w - size) // 2
    return img[y:y + size, x:x + size]


def box_resize(img: np.ndarray, box: tuple[int, int, int, int], ow: int, oh: int) -> np.ndarray:
    left, top, bw, bh = box
    return cv2.resize(img[top:top + bh, left:left + bw], (ow, oh), interpolation=cv2.INTER_LINEAR)


def decode(path: Path, mode: str = "RGB") -> np.ndarray:
    """libjpeg-turbo through PIL: the pixels `cv2.imread` + BGR->RGB gives (checked below)."""
    pixels = np.asarray(Image.open(path).convert(mode))
    if mode == "RGB":
        cv = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        assert np.array_equal(cv, pixels), f"{path}: PIL and OpenCV decode differently"
    return pixels


def fixtures(alb_path: Path) -> None:
    A = import_albumentations(alb_path)
    F = A.augmentations.functional

    gray = decode(VAL_IMAGE, "L")
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    assert np.array_equal(rgb, decode(VAL_IMAGE)), "grayscale JPEG decodes to equal channels"
    resized = A.SmallestMaxSize(224, p=1.0)(image=rgb)["image"]
    cropped = A.Compose([A.SmallestMaxSize(224, p=1.0), A.CenterCrop(224, 224, p=1.0)])(
        image=rgb)["image"]
    assert resized.shape == (224, 299, 3), resized.shape
    assert np.array_equal(resized, smallest_max_size(rgb, 224))
    assert np.array_equal(cropped, center_crop(smallest_max_size(rgb, 224), 224))
    assert np.array_equal(cropped, resized[:, 37:37 + 224])
    for c in range(3):
        assert np.array_equal(resized[:, :, c], resized[:, :, 0])

    left, top, cw, ch = COLOUR_REGION
    colour = np.ascontiguousarray(decode(COLOUR_IMAGE)[top:top + ch, left:left + cw])
    rrc = A.RandomResizedCrop(64, 64, p=1.0)
    l, t, bw, bh = RRC_BOX
    # albumentations places the box by fractions: y1 = int((H - bh) * h_start).
    h_start, w_start = (t + 0.5) / (ch - bh), (l + 0.5) / (cw - bw)
    rrc_out = rrc.apply(colour, crop_height=bh, crop_width=bw, h_start=h_start, w_start=w_start)
    assert np.array_equal(rrc_out, box_resize(colour, RRC_BOX, 64, 64))
    up = F.resize(np.ascontiguousarray(colour[UPSCALE_BOX[1]:UPSCALE_BOX[1] + UPSCALE_BOX[3],
                                              UPSCALE_BOX[0]:UPSCALE_BOX[0] + UPSCALE_BOX[2]]),
                  51, 69, cv2.INTER_LINEAR)
    assert np.array_equal(up, box_resize(colour, UPSCALE_BOX, 69, 51))
    half = A.Resize(72, 96, p=1.0)(image=colour)["image"]
    area = cv2.resize(colour, (96, 72), interpolation=cv2.INTER_AREA)
    assert np.array_equal(half, area), "an exact 2x shrink is OpenCV's INTER_AREA"
    glob = A.Resize(64, 64, p=1.0)(image=colour)["image"]

    rng = np.random.default_rng(0)
    sizes = [((1, 1), (5, 3)), ((5, 3), (1, 1)), ((7, 1), (3, 4)), ((2, 2), (1, 1)),
             ((24, 24), (12, 12)), ((3, 3), (24, 24)), ((24, 16), (8, 5))]
    sizes += [(tuple(rng.integers(1, 25, 2)), tuple(rng.integers(1, 25, 2))) for _ in range(25)]
    noise = {}
    for i, ((w, h), (ow, oh)) in enumerate(sizes):
        src = rng.integers(0, 256, (int(h), int(w), 3), dtype=np.uint8)
        noise[f"noise/{i:02}/source"] = src
        noise[f"noise/{i:02}/output"] = cv2.resize(src, (int(ow), int(oh)),
                                                   interpolation=cv2.INTER_LINEAR)

    tensors = {
        **noise,
        "val/source": gray,
        "val/resized": np.ascontiguousarray(resized[:, :, 0]),
        "val/cropped": np.ascontiguousarray(cropped[:, :, 0]),
        "colour/source": colour,
        "colour/rrc_box": np.array(RRC_BOX, dtype=np.int64),
        "colour/rrc": rrc_out,
        "colour/upscale_box": np.array(UPSCALE_BOX, dtype=np.int64),
        "colour/upscale": up,
        "colour/half": half,
        "colour/global": glob,
    }
    metadata = {
        "generator": "tools/reference/upstream_resize.py",
        "opencv": cv2.__version__,
        "albumentations": A.__version__,
        "val_source": str(VAL_IMAGE.relative_to(ROOT)),
        "colour_source": str(COLOUR_IMAGE.relative_to(ROOT)),
        "colour_region": ",".join(map(str, COLOUR_REGION)),
    }
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(OUT), metadata=metadata)
    print(f"wrote {OUT.relative_to(ROOT)}: {os.path.getsize(OUT)} bytes "
          f"(OpenCV {cv2.__version__}, albumentations {A.__version__})")


def resnet50():
    """torchvision's ResNet-50 as tools/reference/check_resnet50_features.py builds it: random
    weights (seed 0, zero_init_residual) with every BatchNorm randomised."""
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None, zero_init_residual=True)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def features(dump: Path) -> None:
    import torch
    import torchvision.transforms.functional as TF

    data = load_file(str(dump))
    names = sorted({k.split("/")[0] for k in data})
    model = resnet50()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def embed(images: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
        x = (x - mean) / std
        with torch.no_grad():
            x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
            grid = model.layer4(model.layer3(model.layer2(model.layer1(x))))
        return grid.flatten(1), grid.mean(dim=(2, 3))

    def rel(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
        return ((a - b).norm(dim=1) / b.norm(dim=1)).numpy()

    for kind in ["val", "rrc"]:
        variants: dict[str, list[np.ndarray]] = {k: [] for k in
                                                 ["torchvision", "upstream", "cv2_same_pixels",
                                                  "cv2_libjpeg", "pil_torchvision"]}
        for name in names:
            source = data[f"{name}/source"]
            path = next(SAMPLE.glob(f"*/{name}.jpg"))
            libjpeg = decode(path)
            variants["torchvision"].append(data[f"{name}/{kind}_torchvision"])
            variants["upstream"].append(data[f"{name}/{kind}_upstream"])
            if kind == "val":
                variants["cv2_same_pixels"].append(center_crop(smallest_max_size(source, 224), 224))
                variants["cv2_libjpeg"].append(center_crop(smallest_max_size(libjpeg, 224), 224))
                pil = TF.center_crop(TF.resize(Image.fromarray(libjpeg), 224,
                                               interpolation=TF.InterpolationMode.BILINEAR), 224)
            else:
                box = tuple(int(v) for v in data[f"{name}/rrc_box"])
                variants["cv2_same_pixels"].append(box_resize(source, box, 224, 224))
                variants["cv2_libjpeg"].append(box_resize(libjpeg, box, 224, 224))
                left, top, bw, bh = box
                pil = Image.fromarray(libjpeg).resize((224, 224), Image.BILINEAR,
                                                      box=(left, top, left + bw, top + bh))
            variants["pil_torchvision"].append(np.asarray(pil))
        feats = {k: embed(v) for k, v in variants.items()}
        pixel = np.abs(np.stack(variants["upstream"]).astype(int)
                       - np.stack(variants["cv2_same_pixels"])).max()
        print(f"\n{kind} ({'SmallestMaxSize(224) + CenterCrop(224)' if kind == 'val' else 'RandomResizedCrop(224), seeded boxes'}), "
              f"{len(names)} images; upstream mode vs cv2 on the same pixels: max |pixel diff| {pixel}")
        for a, b in [("upstream", "cv2_same_pixels"), ("upstream", "cv2_libjpeg"),
                     ("torchvision", "upstream"), ("torchvision", "pil_torchvision"),
                     ("pil_torchvision", "cv2_libjpeg")]:
            g = rel(feats[a][0], feats[b][0])
            p = rel(feats[a][1], feats[b][1])
            print(f"  {a:>16} vs {b:<16} relative L2: layer4 grid mean {g.mean():.2e} max {g.max():.2e}"
                  f" | pooled mean {p.mean():.2e} max {p.max():.2e}")
        # Scale: the same measure between different photographs (image i against image i + 1).
        g = rel(feats["upstream"][0], feats["upstream"][0].roll(1, 0))
        p = rel(feats["upstream"][1], feats["upstream"][1].roll(1, 0))
        print(f"  {'(other images)':>36} relative L2: layer4 grid mean {g.mean():.2e}"
              f" | pooled mean {p.mean():.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--albumentations", type=Path,
                        help="an unpacked albumentations 0.5.x wheel (see the usage above)")
    parser.add_argument("--features", type=Path, help="measure ResNet-50 features on this dump")
    args = parser.parse_args()
    if args.features:
        features(args.features)
    elif args.albumentations:
        fixtures(args.albumentations)
    else:
        parser.error("give --albumentations DIR (fixtures) or --features DUMP (measurement)")


if __name__ == "__main__":
    main()
