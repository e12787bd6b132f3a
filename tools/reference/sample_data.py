#!/usr/bin/env python3
"""Builds the embedded COCO-layout sample in crates/virtex-data/sample/ (committed; CI never runs Python).

Images: real photographs shipped inside the scikit-image wheel (`skimage/data/`), each public domain
or CC0 according to scikit-image's own data documentation (the docstrings of `skimage.data.<name>`,
quoted in PROVENANCE below and in sample/README.md). They are downscaled to at most 480 px on the
long side and re-encoded as JPEG (quality 85; grayscale images stay grayscale) or PNG, so the sample
stays far below 5 MB and exercises the grayscale → RGB path.

Captions: written by hand for this project (5 per image, COCO style), released with the project
under its licence. Some mention "left"/"right" (the flip augmentation rewrites them) and one has an
accent (the reader strips it).

Then a tiny SentencePiece BPE vocabulary is trained on the train captions with upstream VirTex's
trainer flags (`sample/vocab/coco_sample.model`).

Usage:  ~/.venvs/ref/bin/pip install scikit-image sentencepiece
        ~/.venvs/ref/bin/python tools/reference/sample_data.py
"""
from __future__ import annotations

import json
import os
import unicodedata
from pathlib import Path

import sentencepiece as spm
import skimage
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "crates" / "virtex-data" / "sample"
SKDATA = Path(skimage.__file__).parent / "data"
MAX_SIDE = 480

# (split, image_id, skimage file, output extension, licence line, captions)
IMAGES = [
    ("train", 1, "astronaut.png", "jpg",
     "public domain (NASA Great Images; skimage.data.astronaut: 'No known copyright restrictions, released into the public domain')",
     ["A smiling astronaut in an orange flight suit poses next to her helmet.",
      "a woman in an orange space suit with a flag on the left side of the photo.",
      "An astronaut holding a white helmet in front of a model of the space shuttle.",
      "portrait of a female astronaut wearing an orange suit with mission patches.",
      "A woman in a pressure suit smiles, with a space shuttle model on the right."]),
    ("train", 2, "camera.png", "jpg",
     "CC0 (photographer Lav Varshney; skimage.data.camera: 'No copyright restrictions. CC0 by the photographer')",
     ["A black and white photo of a man looking through a camera on a tripod.",
      "a man in a dark coat filming on a large grassy field.",
      "A photographer stands behind a tripod with buildings in the distance.",
      "black and white image of a man operating a camera outdoors.",
      "A man wearing a long coat uses a camera mounted on a tripod in a park."]),
    ("train", 3, "chelsea.png", "jpg",
     "CC0 (photographer Stefan van der Walt; skimage.data.chelsea: 'No copyright restrictions. CC0 by the photographer')",
     ["A close up of a tabby cat with green eyes.",
      "the face of a striped cat looking to the left of the camera.",
      "A brown tabby cat staring with big yellow green eyes.",
      "close up photo of a cat's face and whiskers.",
      "A cat with orange and black stripes looks at something off to the right."]),
    ("train", 4, "coffee.png", "jpg",
     "CC0 (photographer Rachel Michetti; skimage.data.coffee: 'No copyright restrictions. CC0 by the photographer')",
     ["A cup of espresso on a red saucer with a spoon.",
      "a small coffee cup sitting on a saucer on a wooden table.",
      "An espresso in a white and red cup, served at a café.",
      "A red and white coffee cup with a metal spoon on the right side.",
      "top view of a cup of coffee on a brown wooden table."]),
    ("train", 5, "rocket.jpg", "jpg",
     "public domain (SpaceX; skimage.data.rocket: 'captured by SpaceX and released in the public domain')",
     ["A rocket standing on a launch pad at dusk.",
      "a tall white rocket between two towers under a blue evening sky.",
      "A Falcon 9 rocket is ready for launch, with bright lights around the pad.",
      "the launch pad is lit up at night with a rocket in the middle.",
      "A rocket on its pad with lightning towers on the left and the right."]),
    ("train", 6, "coins.png", "jpg",
     "no known copyright restrictions (Brooklyn Museum collection; skimage.data.coins: 'No known copyright restrictions')",
     ["Rows of old coins laid out on a dark background.",
      "a black and white photo of twenty four ancient coins.",
      "Several silver coins arranged in four rows on a table.",
      "old greek coins displayed in a grid.",
      "A collection of round coins with faces and animals stamped on them."]),
    ("train", 7, "hubble_deep_field.jpg", "jpg",
     "public domain (NASA; skimage.data.hubble_deep_field: 'captured by NASA and may be freely used in the public domain')",
     ["A view of many distant galaxies in deep space.",
      "a black sky full of small colorful stars and galaxies.",
      "Thousands of galaxies photographed by a space telescope.",
      "a dark image of outer space with tiny points of light.",
      "Many bright red, white and blue galaxies against a black background."]),
    ("train", 8, "brick.png", "jpg",
     "CC0 (CC0Textures Bricks25; skimage.data.brick: 'licensed under the Creative Commons CC0 License')",
     ["A close up of a gray brick wall.",
      "rows of long narrow bricks laid in a pattern.",
      "A black and white photo of bricks on a wall, seen at an angle.",
      "a brick pavement photographed from above.",
      "Gray bricks with light mortar lines running from left to right."]),
    ("train", 9, "grass.png", "jpg",
     "CC0 (linolafett on DeviantArt; skimage.data.grass: 'licensed under the Creative Commons CC0 License')",
     ["A close up of green grass seen from above.",
      "a patch of lawn with short blades of grass.",
      "A black and white photo of grass and a few leaves.",
      "grass covering the ground in a yard.",
      "Thick grass growing in a field, photographed up close."]),
    ("train", 10, "retina.jpg", "jpg",
     "CC0 1.0 (Wikimedia Commons, Fundus photograph of normal left eye; skimage.data.retina: 'made available under the Creative Commons CC0 1.0 Universal Public Domain Dedication')",
     ["A photo of the back of a human eye showing blood vessels.",
      "an orange round image of a retina with red veins.",
      "A medical image of the inside of the left eye.",
      "the retina of an eye with the optic disc on the left.",
      "A round red and orange picture of an eye, taken by a doctor."]),
    ("val", 11, "clock_motion.png", "jpg",
     "public domain (photographer Stefan van der Walt; skimage.data.clock: 'Released into the public domain by the photographer')",
     ["A blurry photo of a clock on a white wall.",
      "a wall clock that is out of focus because the camera moved.",
      "A round clock hanging on a wall, blurred from left to right.",
      "a black and white photo of a blurred clock.",
      "The face of a clock on a gray wall with motion blur."]),
    ("val", 12, "gravel.png", "jpg",
     "CC0 (CC0Textures Gravel04; skimage.data.gravel: 'licensed under the Creative Commons CC0 License')",
     ["A close up of small gray stones.",
      "a pile of gravel seen from above.",
      "A black and white photo of many small rocks on the ground.",
      "gravel covering a path.",
      "Lots of little pebbles filling the whole picture."]),
    ("val", 13, "text.png", "png",
     "public domain (Wikipedia File:Corner.png; skimage.data.text: 'No known copyright restrictions, released into the public domain')",
     ["Handwritten math written in chalk on a dark surface.",
      "a photo of equations written on a slate.",
      "Some numbers and letters scribbled on the ground.",
      "white writing on a gray board seen at an angle.",
      "A close up of handwritten formulas on a chalkboard."]),
]


def normalise(caption: str) -> str:
    """Upstream's caption normalisation (virtex/data/datasets/coco_captions.py)."""
    caption = unicodedata.normalize("NFKD", caption.lower())
    return "".join(c for c in caption if not unicodedata.combining(c))


def main() -> None:
    (OUT / "annotations").mkdir(parents=True, exist_ok=True)
    (OUT / "vocab").mkdir(parents=True, exist_ok=True)
    files = {"train": [], "val": []}
    annotations = {"train": [], "val": []}
    ann_id = 1000
    for split, image_id, name, ext, _licence, captions in IMAGES:
        assert len(captions) == 5
        folder = OUT / f"{split}2017"
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.open(SKDATA / name)
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB")
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.LANCZOS)
        file_name = f"{image_id:012d}.{ext}"
        if ext == "jpg":
            image.save(folder / file_name, quality=85, optimize=True)
        else:
            image.save(folder / file_name, optimize=True)
        files[split].append({"id": image_id, "file_name": file_name, "width": image.width,
                             "height": image.height, "license": 0})
        for caption in captions:
            annotations[split].append({"image_id": image_id, "id": ann_id, "caption": caption})
            ann_id += 1
    for split in ("train", "val"):
        doc = {
            "info": {"description": "virtex-data sample: COCO Captions layout, hand-written captions",
                     "version": "1.0", "year": 2026},
            "licenses": [{"id": 0, "name": "public domain or CC0, see README.md"}],
            "images": files[split],
            "annotations": annotations[split],
        }
        with open(OUT / "annotations" / f"captions_{split}2017.json", "w") as f:
            json.dump(doc, f, indent=1, ensure_ascii=False)
            f.write("\n")

    # Tiny vocabulary with upstream's trainer flags (scripts/build_vocabulary.py).
    corpus = OUT / "vocab" / "corpus.tmp.txt"
    with open(corpus, "w") as f:
        for ann in annotations["train"]:
            f.write(normalise(ann["caption"]) + "\n")
    spm.SentencePieceTrainer.train(
        f"--input={corpus} --model_prefix={OUT / 'vocab' / 'coco_sample'} --vocab_size=400 "
        "--model_type=bpe --character_coverage=1.0 --bos_id=-1 --eos_id=-1 "
        "--control_symbols=[SOS],[EOS],[MASK] --minloglevel=2"
    )
    os.remove(corpus)
    os.remove(OUT / "vocab" / "coco_sample.vocab")

    with open(OUT / "PROVENANCE.tsv", "w") as f:
        f.write("split\tfile\tsource (scikit-image data)\tlicence\n")
        for split, image_id, name, ext, licence, _ in IMAGES:
            f.write(f"{split}2017\t{image_id:012d}.{ext}\tskimage/data/{name}\t{licence}\n")


if __name__ == "__main__":
    main()
