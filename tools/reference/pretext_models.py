#!/usr/bin/env python3
"""Reference fixtures for the pretext ablations of the `virtex` crate, computed with PyTorch.

Upstream's repository (kdexd/virtex) is not reachable from here: `ClassificationModel`
(`virtex/models/classification.py`, with `LinearTextualHead` from
`virtex/modules/textual_heads.py`), `MaskedLMModel` (`virtex/models/masked_lm.py`) and the
masking of `MaskedLmDataset` (`virtex/data/datasets/masked_lm.py`) are re-implemented below
from the description in ../shared/docs/virtex-spec.md (§1.7), with the upstream code's
structure (the per-image Python loop of the classification loss, `random.sample` /
`random.random()` masking). The transformer head is the one of tools/reference/textual.py,
run without its causal mask as upstream's factory does for `masked_lm`. CI never runs Python;
the outputs are committed:

crates/virtex/tests/fixtures/
  token_classification_tiny.pth       official layout {"model": state_dict}: visual.cnn.*
                                      (torchvision Bottleneck ResNet [1,1,1,1], stem 4, 128
                                      channels), textual.output.{weight,bias} (V = 50)
  multilabel_classification_tiny.pth  the same with V = 81 (upstream's COCO categories)
  masked_lm_tiny.pth                  visual.cnn.* and textual.* (L1 H16 A2 F64, V = 50, 30
                                      positions, tied output weight)
  pretext_reference.safetensors       inputs, labels, eval logits and train/eval losses of the
                                      three models

Every weight is randomised to non-trivial values (upstream's init would make the logits
nearly uniform and hide bugs); dropout is 0 so train-mode losses are deterministic.

Usage:  ~/.venvs/ref/bin/python tools/reference/pretext_models.py
"""
from __future__ import annotations

import copy
import math
import os
import random
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backbone import NarrowResNet, randomise  # noqa: E402
from textual import TextualHead, Visual, randomise_textual  # noqa: E402
from torchvision.models.resnet import Bottleneck  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "crates" / "virtex" / "tests" / "fixtures"

PAD, SOS, EOS, MASK = 0, 1, 2, 3
TOKEN_VOCAB, MULTILABEL_VOCAB = 50, 81


# --------------------------------------------------------------------------------------------
# Models (spec §1.7)
# --------------------------------------------------------------------------------------------
class LinearTextualHead(nn.Module):
    """GAP of the visual grid, then `self.output = nn.Linear(visual_feature_size, vocab_size)`."""

    def __init__(self, visual_feature_size, vocab_size):
        super().__init__()
        self.output = nn.Linear(visual_feature_size, vocab_size)

    def forward(self, visual_features, caption_tokens=None, caption_lengths=None):
        b, c, _, _ = visual_features.size()
        visual_features = visual_features.view(b, c, -1).permute(0, 2, 1)
        return self.output(visual_features.mean(dim=1))


class ClassificationModel(nn.Module):
    """Upstream's loss: a Python loop over images of the mean −log p over unique labels."""

    def __init__(self, cnn, textual, ignore_indices):
        super().__init__()
        self.visual = Visual(cnn)
        self.textual = textual
        self.ignore_indices = ignore_indices

    def forward(self, images, labels):
        logits = self.textual(self.visual(images))
        logprobs = F.log_softmax(logits, dim=1)
        loss = torch.tensor(0.0)
        for index in range(logits.size(0)):
            unique_tokens = set(labels[index].tolist())
            unique_tokens = [t for t in unique_tokens if t not in self.ignore_indices]
            loss = loss - logprobs[index, unique_tokens].mean()
        return loss / logits.size(0), logits


class BidirectionalHead(TextualHead):
    """The transformer head with `mask_future_positions = False`."""

    def forward(self, visual_features, caption_tokens, caption_lengths):
        b, c, h, w = visual_features.shape
        memory = self.visual_projection(visual_features.view(b, c, h * w).permute(0, 2, 1))
        t = caption_tokens.size(1)
        padding = caption_lengths.unsqueeze(1) < torch.arange(1, t + 1).unsqueeze(0)
        x = self.embedding(caption_tokens)
        y = self.transformer(x, memory, tgt_mask=None, tgt_key_padding_mask=padding)
        return self.output(y)


class MaskedLMModel(nn.Module):
    def __init__(self, cnn, textual):
        super().__init__()
        self.visual = Visual(cnn)
        self.textual = textual
        self.loss = nn.CrossEntropyLoss(ignore_index=PAD)

    def forward(self, images, caption_tokens, caption_lengths, masked_labels):
        logits = self.textual(self.visual(images), caption_tokens, caption_lengths)
        loss = self.loss(logits.view(-1, logits.size(-1)), masked_labels.view(-1))
        return loss, logits


def mask_caption(caption_tokens, vocab_size, rng, mask_proportion=0.15, mask_prob=0.85,
                 replace_prob=0.10):
    """`MaskedLmDataset.__getitem__`'s masking, with `rng` in place of the `random` module."""
    caption_tokens = list(caption_tokens)
    masked_labels = [PAD] * len(caption_tokens)
    tokens_to_mask = rng.sample(list(range(1, len(caption_tokens) - 1)),
                                math.ceil((len(caption_tokens) - 2) * mask_proportion))
    for i in tokens_to_mask:
        if len(tokens_to_mask) == 1:
            masked_labels[i] = caption_tokens[i]
            caption_tokens[i] = MASK
        else:
            flag = rng.random()
            if flag <= mask_prob + replace_prob:
                if flag <= mask_prob:
                    masked_labels[i] = caption_tokens[i]
                    caption_tokens[i] = MASK
                else:
                    caption_tokens[i] = rng.randint(0, vocab_size - 1)
    return caption_tokens, masked_labels


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------
def tiny_cnn(generator):
    cnn = NarrowResNet(Bottleneck, [1, 1, 1, 1], stem=4)
    randomise(cnn, generator)
    cnn.fc = nn.Identity()
    return cnn


def strip_fc(state):
    return {k: v for k, v in state.items() if ".fc." not in k}


def classification_fixture(name, vocab, ignore, labels, images, generator, tensors):
    head = LinearTextualHead(128, vocab)
    with torch.no_grad():
        head.output.weight.copy_(torch.randn(vocab, 128, generator=generator) / math.sqrt(32))
        head.output.bias.copy_(0.5 * torch.randn(vocab, generator=generator))
    model = ClassificationModel(tiny_cnn(generator), head, ignore)
    tensors[f"{name}.labels"] = labels
    train = copy.deepcopy(model).train()
    loss, _ = train(images, labels)
    tensors[f"{name}.train.loss"] = loss.detach().reshape(1)
    model.eval()
    with torch.no_grad():
        loss, logits = model(images, labels)
    tensors[f"{name}.eval.loss"] = loss.reshape(1)
    tensors[f"{name}.eval.logits"] = logits
    torch.save({"model": strip_fc(model.state_dict())}, OUT / f"{name}_tiny.pth")
    print(f"{name}: train {tensors[f'{name}.train.loss'].item():.6f} "
          f"eval {loss.item():.6f}")


def masked_lm_fixture(images, generator, tensors):
    head = BidirectionalHead(128, TOKEN_VOCAB, 16, 1, 2, 64, dropout=0.0, max_caption_length=30)
    model = MaskedLMModel(tiny_cnn(generator), head)
    randomise_textual(model.textual, generator, word_scale=1.0)

    # Long captions so several tokens are chosen and every outcome (mask, replace, keep)
    # appears; a seed is searched for that (the stream is Python's, not ours).
    captions = [[SOS, 11, 23, 0, 7, 42, 9, 17, 30, 31, 12, 19, 44, 8, 5, EOS],
                [SOS, 30, 4, 27, 6, 14, 33, 10, 21, 22, 25, 13, 48, EOS],
                [SOS, 16, 20, 24, EOS]]
    for seed in range(1000):
        rng = random.Random(seed)
        masked = [mask_caption(c, TOKEN_VOCAB, rng) for c in captions]
        kinds = set()
        for caption, (tokens, labels) in zip(captions, masked):
            for i, (orig, new, label) in enumerate(zip(caption, tokens, labels)):
                if label != PAD:
                    kinds.add("mask")
                elif new != orig:
                    kinds.add("replace")
            chosen = math.ceil((len(caption) - 2) * 0.15)
            kept = chosen - sum(l != PAD for l in labels) - sum(
                (l == PAD and n != o) for o, n, l in zip(caption, tokens, labels))
            if kept > 0:
                kinds.add("keep")
        if kinds == {"mask", "replace", "keep"} and all(any(l) for _, l in masked):
            print(f"masked LM masking seed {seed}")
            break
    else:
        raise SystemExit("no seed masks, replaces and keeps")
    t = max(len(c) for c in captions)
    tokens = torch.zeros(len(captions), t, dtype=torch.long)
    labels = torch.zeros(len(captions), t, dtype=torch.long)
    for i, (tok, lab) in enumerate(masked):
        tokens[i, :len(tok)] = torch.tensor(tok)
        labels[i, :len(lab)] = torch.tensor(lab)
    lengths = torch.tensor([len(c) for c in captions])
    # A third image, the first one mirrored (rebuilt by the Rust test: not stored).
    images3 = torch.cat([images, images[:1].flip(-1)], 0)
    tensors.update({"masked_lm.caption_tokens": tokens,
                    "masked_lm.masked_labels": labels, "masked_lm.caption_lengths": lengths})

    train = copy.deepcopy(model).train()
    loss, _ = train(images3, tokens, lengths, labels)
    tensors["masked_lm.train.loss"] = loss.detach().reshape(1)
    model.eval()
    with torch.no_grad():
        loss, logits = model(images3, tokens, lengths, labels)
    tensors["masked_lm.eval.loss"] = loss.reshape(1)
    tensors["masked_lm.eval.logits"] = logits
    print("masked tokens", tokens.tolist())
    print("masked labels", labels.tolist())
    torch.save({"model": strip_fc(model.state_dict())}, OUT / "masked_lm_tiny.pth")
    print(f"masked_lm: train {tensors['masked_lm.train.loss'].item():.6f} eval {loss.item():.6f}")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(20261205)
    images = torch.randn(2, 3, 64, 48, generator=generator)
    tensors = {"images": images}
    # Token labels are caption tokens: repeated ids count once, 0..=3 are ignored.
    token_labels = torch.tensor([[SOS, 5, 5, 7, 0, 12, EOS, 0, 0],
                                 [SOS, 4, 9, 4, 11, MASK, 49, 9, EOS]])
    classification_fixture("token_classification", TOKEN_VOCAB, [0, 1, 2, 3], token_labels,
                           images, generator, tensors)
    # Multilabel: COCO categories 1..80, 0 pads; repeats count once.
    multilabel_labels = torch.tensor([[3, 3, 80, 1, 0, 0], [17, 44, 17, 2, 9, 0]])
    classification_fixture("multilabel_classification", MULTILABEL_VOCAB, [0],
                           multilabel_labels, images, generator, tensors)
    masked_lm_fixture(images, generator, tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()},
              OUT / "pretext_reference.safetensors")
    os.chmod(OUT / "pretext_reference.safetensors", 0o644)
    for name in ("token_classification_tiny.pth", "multilabel_classification_tiny.pth",
                 "masked_lm_tiny.pth", "pretext_reference.safetensors"):
        print(f"{name}: {os.path.getsize(OUT / name)} bytes")
    print(f"torch {torch.__version__}")


if __name__ == "__main__":
    main()
