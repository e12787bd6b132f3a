#!/usr/bin/env python3
"""Parity fixtures for the SentencePiece-compatible tokenizer of `virtex-data`.

Trains a small SentencePiece BPE model with upstream VirTex's trainer flags (upstream `scripts/build_vocabulary.py`:
`--model_type=bpe --character_coverage=1.0 --bos_id=-1 --eos_id=-1
--control_symbols=[SOS],[EOS],[MASK]`, everything else default, so nmt_nfkc normalisation, the
"▁" dummy prefix and unk id 0) on a caption corpus: the embedded sample's train captions plus a
synthetic COCO-style corpus generated below from fixed templates. Then records, with the
`sentencepiece` package itself:

- crates/virtex-data/tests/fixtures/spm_bpe.model   the model (protobuf, ~250 KB)
- crates/virtex-data/tests/fixtures/spm_cases.json  encode cases (ids and pieces), decode cases,
                                                    and upstream caption cases ([SOS] + ids + [EOS]
                                                    truncated to 30, after upstream's caption
                                                    normalisation), for this model and for the
                                                    sample vocabulary (sample/vocab/coco_sample.model)
- crates/virtex-data/assets/nmt_nfkc.charsmap       sentencepiece's precompiled nmt_nfkc normaliser
                                                    (the bytes every nmt_nfkc model carries), used by
                                                    vocabularies that we train ourselves

Usage:  ~/.venvs/ref/bin/pip install sentencepiece protobuf
        ~/.venvs/ref/bin/python tools/reference/tokenizer.py
"""
from __future__ import annotations

import itertools
import json
import random
import unicodedata
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as model_pb2

ROOT = Path(__file__).resolve().parents[2]
CRATE = ROOT / "crates" / "virtex-data"
FIX = CRATE / "tests" / "fixtures"
SAMPLE_MODEL = CRATE / "sample" / "vocab" / "coco_sample.model"

SUBJECTS = ["a man", "a woman", "two dogs", "a black cat", "a young boy", "an old lady",
            "a group of people", "a brown horse", "three children", "a large elephant",
            "a surfer", "a skateboarder", "a red bus", "a white truck", "a small bird",
            "a baseball player", "a chef", "a giraffe", "two zebras", "a teddy bear"]
VERBS = ["is standing", "is sitting", "is riding a bike", "is eating a sandwich",
         "is playing frisbee", "is walking", "is holding an umbrella", "is looking out",
         "is sleeping", "is running", "is parked", "is flying a kite", "is waiting"]
PLACES = ["on the beach", "in a kitchen", "next to a building", "on a city street",
          "in the snow", "near the water", "in a grassy field", "on top of a table",
          "at the airport", "under a tree", "beside a fence", "in front of a mirror",
          "on the left side of the road", "to the right of a car", "in a bright room"]
EXTRAS = ["", "", "", " at night", " on a sunny day", " with a friend", ", smiling",
          " while it rains", " in 2 minutes", " near 10 red cones"]


def normalise(caption: str) -> str:
    """Upstream's caption normalisation (virtex/data/datasets/coco_captions.py)."""
    caption = unicodedata.normalize("NFKD", caption.lower())
    return "".join(c for c in caption if not unicodedata.combining(c))


def synthetic_corpus() -> list[str]:
    rng = random.Random(0)
    lines = [f"{s} {v} {p}{e}." for s, v, p, e in itertools.product(SUBJECTS, VERBS, PLACES, EXTRAS)]
    rng.shuffle(lines)
    return lines[:6000]


def sample_captions() -> list[str]:
    with open(CRATE / "sample" / "annotations" / "captions_train2017.json") as f:
        return [normalise(a["caption"]) for a in json.load(f)["annotations"]]


ENCODE_TEXTS = [
    "", " ", "   ", "a", "a man riding a horse on the beach.",
    "A Man Riding A Horse", "two  dogs   playing", "  leading and trailing  ",
    "tab\tand\nnewline", "café crème brûlée", "naïve façade", "e\u0301 combining",
    "2 dogs and 10 cats in 1984", "123456789", "3.14 is pi", "hello, world! (really?) -- yes; ok: fine.",
    "a dog's toy \"quoted\" 'single'", "xylophone quixotic zephyr", "the giraffe-like zebra",
    "日本の猫", "emoji 🐶 dog", "ＦＵＬＬ ｗｉｄｔｈ １２３", "ﬁsh ligature", "non\u00a0breaking space",
    "zero\u200bwidth", "[SOS] [EOS] [MASK] <unk>", "left right bright upright leftover",
    "a surfer is standing on the beach at night",
    "an old lady is holding an umbrella in the snow while it rains near 10 red cones",
    "qqqq jjjj vvvv", "ß straße", "Ωmega σς", "a" * 40, "x" * 5 + " " + "q" * 7,
]

DECODE_IDS = [[], [0], [1, 2, 3], [0, 0], [4, 5, 6], [1, 4, 5, 6, 2], [0, 4, 5], [4, 0, 5],
              [1, 0, 4, 2], [3, 3, 7]]
# Which piece drops its leading "▁" when the text starts with a bare "▁" or a control symbol.
DECODE_PIECES = [["▁", "▁a"], ["▁", "a"], ["▁a", "▁"], ["[SOS]", "▁", "▁a"], ["▁", "▁", "▁the"]]


def cases_for(model_path: Path, extra_texts: list[str]) -> dict:
    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    vocab = sp.get_piece_size()
    encode = []
    for text in ENCODE_TEXTS + extra_texts:
        ids = sp.encode_as_ids(text)
        encode.append({"text": text, "ids": ids, "pieces": sp.encode_as_pieces(text),
                       "decoded": sp.decode_ids(ids)})
    decode = []
    by_piece = [[sp.piece_to_id(p) for p in pieces] for pieces in DECODE_PIECES]
    for ids in DECODE_IDS + by_piece + [list(range(0, min(vocab, 40)))]:
        ids = [i for i in ids if i < vocab]
        decode.append({"ids": ids, "text": sp.decode_ids(ids)})
    captions = []
    for text in ENCODE_TEXTS + extra_texts:
        norm = normalise(text)
        tokens = ([1] + sp.encode_as_ids(norm) + [2])[:30]
        captions.append({"caption": text, "normalised": norm, "caption_tokens": tokens,
                         "noitpac_tokens": tokens[::-1]})
    pieces = [{"piece": sp.id_to_piece(i), "score": sp.get_score(i),
               "control": sp.is_control(i), "unknown": sp.is_unknown(i)} for i in range(vocab)]
    return {"model": str(model_path.relative_to(CRATE)), "vocab_size": vocab, "pieces": pieces,
            "encode": encode, "decode": decode, "captions": captions}


def main() -> None:
    FIX.mkdir(parents=True, exist_ok=True)
    corpus_lines = sample_captions() + [normalise(s) for s in synthetic_corpus()]
    corpus = FIX / "corpus.tmp.txt"
    corpus.write_text("\n".join(corpus_lines) + "\n")
    spm.SentencePieceTrainer.train(
        f"--input={corpus} --model_prefix={FIX / 'spm_bpe'} --vocab_size=600 "
        "--model_type=bpe --character_coverage=1.0 --bos_id=-1 --eos_id=-1 "
        "--control_symbols=[SOS],[EOS],[MASK] --minloglevel=2"
    )
    corpus.unlink()
    (FIX / "spm_bpe.vocab").unlink()

    extra = sample_captions()[:20] + synthetic_corpus()[:20]
    doc = {"generator": "tools/reference/tokenizer.py", "sentencepiece": spm.__version__,
           "models": [cases_for(FIX / "spm_bpe.model", extra), cases_for(SAMPLE_MODEL, extra)]}
    with open(FIX / "spm_cases.json", "w") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")

    proto = model_pb2.ModelProto()
    proto.ParseFromString((FIX / "spm_bpe.model").read_bytes())
    assert proto.normalizer_spec.name == "nmt_nfkc"
    (CRATE / "assets").mkdir(exist_ok=True)
    (CRATE / "assets" / "nmt_nfkc.charsmap").write_bytes(proto.normalizer_spec.precompiled_charsmap)
    print("pieces", len(proto.pieces), "charsmap bytes", len(proto.normalizer_spec.precompiled_charsmap))


if __name__ == "__main__":
    main()
