#!/usr/bin/env python3
"""`virtex features` and `virtex caption` end to end, side by side with PyTorch on the same images.

What each side does, from the weights file on disk to the output file (decode included):

- features: torchvision ResNet-50 `.pth` → decode every JPEG/PNG → Resize(256, antialias) →
  CenterCrop(224) → normalise → layer4 → global average pool → L2 normalise → safetensors.
  Ours: `target/release/virtex features --pooled --l2-normalize` (the VOC07 protocol's features).
  PyTorch: torchvision, PIL, the same steps written as a user would.
- caption: a VirTex `bicaptioning_R_50_L1_H2048`-shaped checkpoint in the official layout
  (`{"model": {visual.cnn.*, textual.*, backward_textual.*}}`, random weights, the sample's
  SentencePiece vocabulary) → decode images → Resize(256) → CenterCrop(224) → ResNet-50 →
  beam search (5 beams, 2 per node, 30 steps, full recomputation per step as upstream) →
  SentencePiece decode → JSON. Ours: `target/release/virtex caption`. PyTorch: our twin of
  upstream's model and beam search (`tools/reference/textual.py`, written from upstream's code;
  its `correct` mode, the CLI's default).

Ours is timed as a whole process (start-up, weight import and writing included); PyTorch's inside
its process after `import torch` (interpreter start-up and imports excluded), so the comparison
favours PyTorch. Both use `--threads` threads (`RAYON_NUM_THREADS`, `torch.set_num_threads`).
The images are the embedded sample's 13 COCO images (640×480-ish JPEGs and a PNG), repeated to
`--images` files (`--caption-images` for the caption row). Each side runs `--repeats` times; the table shows the fastest and the median.

Usage: ~/.venvs/ref/bin/python tools/bench/end_to_end.py [--threads 2] [--images 64]
       [--caption-images 8] [--repeats 3] [--only features|caption] [--markdown]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SAMPLE = ROOT / "crates" / "virtex-data" / "sample"
VOCAB = SAMPLE / "vocab" / "coco_sample.model"
sys.path.insert(0, str(ROOT / "tools" / "reference"))

BATCH = 32


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=64, help="images for features")
    # Beam search with full recomputation is ~0.5 TFLOP per image for R50-L1-H2048.
    parser.add_argument("--caption-images", type=int, default=8, help="images for caption")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=["features", "caption"])
    parser.add_argument("--markdown", action="store_true")
    return parser.parse_args()


def copy_images(directory: Path, count: int) -> list[Path]:
    sources = sorted(p for sub in ("train2017", "val2017") for p in (SAMPLE / sub).iterdir()
                     if p.suffix in (".jpg", ".png"))
    directory.mkdir(parents=True)
    files = []
    for i in range(count):
        source = sources[i % len(sources)]
        target = directory / f"{i:012d}{source.suffix}"
        shutil.copyfile(source, target)
        files.append(target)
    return files


def preprocess():
    from torchvision import transforms
    return transforms.Compose([
        transforms.Resize(256, antialias=True),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])


def torch_features(weights: Path, files: list[Path], out: Path) -> None:
    import torch
    import torch.nn.functional as F
    import torchvision
    from PIL import Image
    from safetensors.torch import save_file

    model = torchvision.models.resnet50(weights=None)
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    transform = preprocess()
    pooled = []
    with torch.no_grad():
        for start in range(0, len(files), BATCH):
            batch = torch.stack([transform(Image.open(f).convert("RGB"))
                                 for f in files[start:start + BATCH]])
            x = model.maxpool(model.relu(model.bn1(model.conv1(batch))))
            grid = model.layer4(model.layer3(model.layer2(model.layer1(x))))
            pooled.append(F.normalize(torch.flatten(model.avgpool(grid), 1), dim=1))
    save_file({"features": torch.cat(pooled).contiguous()}, str(out),
              metadata={"files": json.dumps([str(f) for f in files])})


def caption_model(vocab_size: int):
    """bicaptioning_R_50_L1_H2048's shapes, weights randomised as in the parity fixtures."""
    import torch
    import torchvision
    from textual import CaptioningModel, TextualHead, randomise_textual

    generator = torch.Generator().manual_seed(0)
    cnn = torchvision.models.resnet50(weights=None)
    cnn.fc = torch.nn.Identity()
    stages = torchvision.models._utils.IntermediateLayerGetter(cnn, {"layer4": "layer4"})
    cnn.stages = stages
    textual = TextualHead(2048, vocab_size, 2048, 1, 32, 8192, dropout=0.1,
                          max_caption_length=30)
    model = CaptioningModel(cnn, textual, backward=True)
    randomise_textual(model.textual, generator, word_scale=1.0)
    randomise_textual(model.backward_textual.transformer, generator)
    return model


def official_state(model) -> dict:
    return {k: v for k, v in model.state_dict().items()
            if not k.startswith("visual.cnn.stages.") and not k.startswith("visual.cnn.fc.")}


def torch_caption(checkpoint: Path, vocab_size: int, files: list[Path], out: Path) -> None:
    import sentencepiece
    import torch
    from PIL import Image
    from textual import EOS, beam_search

    model = caption_model(vocab_size)
    missing, _ = model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"],
                                       strict=False)
    assert all(k.startswith("visual.cnn.stages.") for k in missing), missing
    model.eval()
    tokenizer = sentencepiece.SentencePieceProcessor(model_file=str(VOCAB))
    transform = preprocess()
    results = []
    with torch.no_grad():
        for start in range(0, len(files), BATCH):
            chunk = files[start:start + BATCH]
            batch = torch.stack([transform(Image.open(f).convert("RGB")) for f in chunk])
            features = model.visual(batch)
            tokens, _ = beam_search(model.textual, features, "correct", beam_size=5)
            for f, row in zip(chunk, tokens.tolist()):
                row = row[:row.index(EOS)] if EOS in row else row
                results.append({"image_id": int(f.stem), "caption": tokenizer.decode(row)})
    out.write_text(json.dumps(results, indent=2) + "\n")


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return times


def run_ours(arguments: list[str], threads: int):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    command = [str(ROOT / "target" / "release" / "virtex"), *arguments]

    def run():
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    return run


def main() -> int:
    args = parse_args()
    print("$ cargo build --release -p virtex-cli", file=sys.stderr)
    subprocess.run(["cargo", "build", "--release", "-p", "virtex-cli"], cwd=ROOT, check=True)

    import sentencepiece
    import torch
    import torchvision

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="virtex-e2e-"))
    files = copy_images(work / "images", args.images)
    images = str(work / "images")
    rows = []

    if args.only in (None, "features"):
        weights = work / "resnet50.pth"
        torch.save(torchvision.models.resnet50(weights=None).state_dict(), weights)
        ours = timed(run_ours(["features", "--weights", str(weights), "--images", images,
                               "--l2-normalize", "--batch-size", str(BATCH),
                               "--out", str(work / "ours.safetensors")], args.threads),
                     args.repeats)
        theirs = timed(lambda: torch_features(weights, files, work / "torch.safetensors"),
                       args.repeats)
        rows.append(("virtex features (R50, pooled + L2)", args.images, ours, theirs))

    if args.only in (None, "caption"):
        vocab_size = sentencepiece.SentencePieceProcessor(model_file=str(VOCAB)).vocab_size()
        checkpoint = work / "bicaptioning_R_50_L1_H2048.pth"
        torch.save({"model": official_state(caption_model(vocab_size))}, checkpoint)
        captioned = work / "caption_images"
        caption_files = copy_images(captioned, args.caption_images)
        ours = timed(run_ours(["caption", "--checkpoint", str(checkpoint), "--vocab", str(VOCAB),
                               "--images", str(captioned), "--batch-size", str(BATCH),
                               "--out", str(work / "ours.json")], args.threads),
                     args.repeats)
        theirs = timed(lambda: torch_caption(checkpoint, vocab_size, caption_files,
                                             work / "torch.json"), args.repeats)
        ours_json = json.loads((work / "ours.json").read_text())
        theirs_json = json.loads((work / "torch.json").read_text())
        # Random weights give near-tied logits: float noise (resize, summation order) flips a
        # late decision now and then, after which the two captions go separate ways.
        same = sum(a["caption"] == b["caption"] for a, b in zip(ours_json, theirs_json))
        shared = words = 0
        for a, b in zip(ours_json, theirs_json):
            x, y = a["caption"].split(), b["caption"].split()
            prefix = next((i for i, (u, v) in enumerate(zip(x, y)) if u != v), min(len(x), len(y)))
            shared, words = shared + prefix, words + max(len(x), len(y))
        print(f"caption: {same}/{len(theirs_json)} captions identical, {shared}/{words} words "
              "in common prefixes", file=sys.stderr)
        rows.append(("virtex caption (R50-L1-H2048, beam 5)", args.caption_images, ours, theirs))

    print(f"\n{args.threads} threads, torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}; files in {work}")
    header = ["command", "images", "ours: fastest / median", "PyTorch: fastest / median",
              "our speed ÷ PyTorch's (fastest)", "ours: images/s"]
    lines = []
    for name, count, ours, theirs in rows:
        lines.append([name, str(count), f"{min(ours):.2f} / {statistics.median(ours):.2f} s",
                      f"{min(theirs):.2f} / {statistics.median(theirs):.2f} s",
                      f"{min(theirs) / min(ours):.2f}×", f"{count / min(ours):.1f}"])
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for line in lines:
            print("| " + " | ".join(line) + " |")
    else:
        for line in [header, *lines]:
            print("  ".join(f"{cell:<38}" if i == 0 else f"{cell:<26}"
                            for i, cell in enumerate(line)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
