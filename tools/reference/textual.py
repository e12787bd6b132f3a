#!/usr/bin/env python3
"""Reference fixtures for `virtex-textual`, `virtex-loss` and `virtex`, computed with PyTorch.

Our own PyTorch implementation of VirTex's textual head, losses, captioning models and decoders,
written from upstream's code (kdexd/virtex; our differences from it: docs/upstream.md) with
`torch.nn.TransformerDecoder` and `nn.MultiheadAttention` as the reference for the decoder. CI
never runs Python; the outputs are committed:

crates/virtex-textual/tests/fixtures/
  head_{postnorm,prenorm}.safetensors   state dict (`state.<torch key>`), inputs, eval logits,
                                        gradients of named parameters (`grad.<torch key>`)
crates/virtex-loss/tests/fixtures/
  losses.safetensors                    captioning CE (forward/backward/sum) with gradients,
                                        token-classification and multilabel losses with gradients
crates/virtex/tests/fixtures/
  bicaptioning_tiny.pth                 official layout: {"model": state_dict, "optimizer",
                                        "iteration"}; visual.cnn.* (torchvision Bottleneck ResNet,
                                        stem 4), textual.*, backward_textual.* with the shared
                                        tensors duplicated
  captioning_tiny.pth                   forward-only model (visual.cnn.*, textual.*)
  bicaptioning_tiny_reference.safetensors
                                        inputs, train-mode loss + components, gradients, eval
                                        features/logits, beam search (upstream and correct modes)
                                        and greedy outputs

Every weight is randomised to non-trivial values (upstream's N(0, 0.02) init would make logits
nearly uniform and hide bugs). Beam-search fixtures are only written when every decision along
the way wins by a margin well above float noise (checked below).

Usage:  ~/.venvs/ref/bin/python tools/reference/textual.py
"""
from __future__ import annotations

import copy
import math
import os
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backbone import NarrowResNet  # noqa: E402  (torchvision blocks with a narrow stem)
from torchvision.models.resnet import Bottleneck  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TEXTUAL_OUT = ROOT / "crates" / "virtex-textual" / "tests" / "fixtures"
LOSS_OUT = ROOT / "crates" / "virtex-loss" / "tests" / "fixtures"
MODEL_OUT = ROOT / "crates" / "virtex" / "tests" / "fixtures"

SOS, EOS, PAD = 1, 2, 0
BEAM_SEED = 90


# --------------------------------------------------------------------------------------------
# Model, from upstream's code (docs/upstream.md)
# --------------------------------------------------------------------------------------------
class WordAndPositionalEmbedding(nn.Module):
    def __init__(self, vocab_size, hidden_size, dropout, max_caption_length, padding_idx=PAD):
        super().__init__()
        self.padding_idx = padding_idx
        self.words = nn.Embedding(vocab_size, hidden_size, padding_idx=padding_idx)
        self.positions = nn.Embedding(max_caption_length, hidden_size)
        self.layer_norm = nn.LayerNorm(hidden_size, eps=1e-8, elementwise_affine=True)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, tokens):
        positions = torch.arange(tokens.size(1), device=tokens.device).unsqueeze(0)
        x = self.layer_norm(self.words(tokens) + self.positions(positions))
        x = self.dropout(x)
        return x * (tokens != self.padding_idx).unsqueeze(-1).to(x.dtype)


class TextualHead(nn.Module):
    def __init__(self, visual_feature_size, vocab_size, hidden_size, num_layers, heads,
                 feedforward, dropout=0.1, prenorm=False, max_caption_length=30):
        super().__init__()
        self.vocab_size = vocab_size
        self.visual_projection = nn.Linear(visual_feature_size, hidden_size)
        self.embedding = WordAndPositionalEmbedding(vocab_size, hidden_size, dropout,
                                                    max_caption_length)
        layer = nn.TransformerDecoderLayer(hidden_size, heads, dim_feedforward=feedforward,
                                           dropout=dropout, activation="gelu", batch_first=True,
                                           norm_first=prenorm)
        self.transformer = nn.TransformerDecoder(
            layer, num_layers, norm=nn.LayerNorm(hidden_size) if prenorm else None)
        self.apply(self._init_weights)
        self.output = nn.Linear(hidden_size, vocab_size)
        self.output.weight = self.embedding.words.weight

    @staticmethod
    def _init_weights(module):
        # Weights only: the biases keep their constructors' values (upstream; docs/upstream.md).
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=0.02)
        elif isinstance(module, nn.MultiheadAttention):
            module.in_proj_weight.data.normal_(mean=0.0, std=0.02)
            module.out_proj.weight.data.normal_(mean=0.0, std=0.02)
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(mean=0.0, std=0.02)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()

    def forward(self, visual_features, caption_tokens, caption_lengths):
        b, c, h, w = visual_features.shape
        memory = self.visual_projection(visual_features.view(b, c, h * w).permute(0, 2, 1))
        t = caption_tokens.size(1)
        padding = caption_lengths.unsqueeze(1) < torch.arange(1, t + 1).unsqueeze(0)
        x = self.embedding(caption_tokens)
        future = torch.triu(torch.full((t, t), float("-inf")), diagonal=1)
        y = self.transformer(x, memory, tgt_mask=future, tgt_key_padding_mask=padding)
        return self.output(y)


class Visual(nn.Module):
    def __init__(self, cnn):
        super().__init__()
        self.cnn = cnn

    def forward(self, images):
        return self.cnn.stages(images)["layer4"]


class CaptioningModel(nn.Module):
    def __init__(self, cnn, textual, backward):
        super().__init__()
        self.visual = Visual(cnn)
        self.textual = textual
        if backward:
            self.backward_textual = copy.deepcopy(textual)
            self.backward_textual.visual_projection = textual.visual_projection
            self.backward_textual.embedding = textual.embedding
            self.backward_textual.output = textual.output
        self.loss = nn.CrossEntropyLoss(ignore_index=PAD)

    def forward(self, images, caption_tokens, noitpac_tokens, caption_lengths):
        features = self.visual(images)
        v = self.textual.vocab_size
        forward_logits = self.textual(features, caption_tokens, caption_lengths)
        forward_loss = self.loss(forward_logits[:, :-1].reshape(-1, v),
                                 caption_tokens[:, 1:].reshape(-1))
        backward_logits = self.backward_textual(features, noitpac_tokens, caption_lengths)
        backward_loss = self.loss(backward_logits[:, :-1].reshape(-1, v),
                                  noitpac_tokens[:, 1:].reshape(-1))
        return forward_loss + backward_loss, forward_loss, backward_loss


def randomise_textual(head: nn.Module, generator: torch.Generator, word_scale=0.5) -> None:
    """Non-trivial values for every textual parameter (row 0 of `words` included)."""
    with torch.no_grad():
        for name, p in head.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=generator))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=generator))
            elif name == "embedding.words.weight":
                p.copy_(word_scale * torch.randn(p.shape, generator=generator))
            elif name == "embedding.positions.weight":
                p.copy_(0.5 * torch.randn(p.shape, generator=generator))
            else:
                fan_in = p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(fan_in))


def pad_reversed(captions):
    """`[SOS, t1..tn, EOS]` captions → (caption_tokens, noitpac_tokens, lengths), right-padded."""
    t = max(len(c) for c in captions)
    forward = torch.zeros(len(captions), t, dtype=torch.long)
    backward = torch.zeros(len(captions), t, dtype=torch.long)
    for i, c in enumerate(captions):
        forward[i, :len(c)] = torch.tensor(c)
        backward[i, :len(c)] = torch.tensor(c[::-1])
    lengths = torch.tensor([len(c) for c in captions])
    return forward, backward, lengths


# --------------------------------------------------------------------------------------------
# Decoding, from upstream's beam search and nucleus sampling (docs/upstream.md); full
# recomputation at every step, as upstream
# --------------------------------------------------------------------------------------------
def step_logprobs(head, features, partial):
    """log_softmax of the last position; features [N, C, h, w], partial [N, t]."""
    lengths = torch.full((partial.size(0),), partial.size(1), dtype=torch.long)
    logits = head(features, partial, lengths)[:, -1, :]
    return F.log_softmax(logits, dim=1)


class Margins:
    """Smallest winning margin of every discrete decision (to reject fragile fixtures)."""

    def __init__(self):
        self.smallest = float("inf")

    def topk(self, values, k):
        top, index = values.topk(min(k + 1, values.size(-1)), dim=-1)
        finite = torch.isfinite(top[..., k - 1]) & torch.isfinite(top[..., k])
        if finite.any():
            gap = (top[..., k - 1] - top[..., k])[finite].min().item()
            self.smallest = min(self.smallest, gap)
        return top[..., :k], index[..., :k]


def beam_search(head, features, mode, beam_size=5, per_node=2, max_steps=30, margins=None):
    margins = margins or Margins()
    b = features.size(0)
    start = torch.full((b, 1), SOS, dtype=torch.long)
    logprobs = step_logprobs(head, features, start)
    top, classes = margins.topk(logprobs, beam_size)
    if beam_size == 1 and (classes == EOS).all():
        return classes, top[:, 0]
    predictions = classes.unsqueeze(-1)                        # [B, beam, 1]
    last_logprobs = top
    vocab = logprobs.size(1)
    repeated = features.unsqueeze(1).repeat(1, beam_size, 1, 1, 1).view(
        b * beam_size, *features.shape[1:])
    after_end = torch.full((b * beam_size, vocab), float("-inf"))
    after_end[:, EOS] = 0.0
    for _ in range(max_steps - 1):
        last = predictions[:, :, -1].reshape(b * beam_size)
        if (last == EOS).all():
            break
        so_far = predictions.reshape(b * beam_size, -1)
        if mode == "correct":
            fed = torch.cat([torch.full((b * beam_size, 1), SOS, dtype=torch.long), so_far], 1)
        else:  # upstream: SOS only at step 0
            fed = so_far
        logprobs = step_logprobs(head, repeated, fed)
        logprobs[torch.arange(b * beam_size), so_far[:, -1]] = -10000.0
        cleaned = torch.where((last == EOS).unsqueeze(1), after_end, logprobs)
        top, classes = margins.topk(cleaned, per_node)
        summed = (top + last_logprobs.reshape(b * beam_size, 1)).reshape(b, beam_size * per_node)
        classes = classes.reshape(b, beam_size * per_node)
        grown = predictions.reshape(b * beam_size, 1, -1).repeat(1, per_node, 1).reshape(
            b, beam_size * per_node, -1)
        grown = torch.cat([grown, classes.unsqueeze(-1)], dim=-1)
        last_logprobs, kept = margins.topk(summed, beam_size)
        predictions = grown.gather(1, kept.unsqueeze(-1).repeat(1, 1, grown.size(-1)))
    return predictions[:, 0, :], last_logprobs[:, 0]


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------
HEAD_GRAD_KEYS = [
    "visual_projection.weight", "visual_projection.bias", "embedding.words.weight",
    "embedding.positions.weight", "embedding.layer_norm.weight",
    "transformer.layers.0.self_attn.in_proj_weight", "transformer.layers.0.self_attn.in_proj_bias",
    "transformer.layers.1.multihead_attn.in_proj_weight",
    "transformer.layers.1.multihead_attn.out_proj.weight", "transformer.layers.0.linear1.weight",
    "transformer.layers.1.linear2.bias", "transformer.layers.1.norm3.weight", "output.bias",
]


def head_fixture(prenorm: bool, generator: torch.Generator) -> dict[str, torch.Tensor]:
    head = TextualHead(24, 40, 16, 2, 2, 64, dropout=0.0, prenorm=prenorm, max_caption_length=12)
    randomise_textual(head, generator)
    features = torch.randn(3, 24, 2, 3, generator=generator)
    # Row 0: a real <unk> (id 0) inside the caption; row 1: padded; row 2: length 0 (every key
    # of every query is masked: torch's SDPA returns zero attention weights, not NaN).
    tokens = torch.tensor([[SOS, 7, 0, 12, 33, 4, EOS],
                           [SOS, 21, EOS, 0, 0, 0, 0],
                           [0, 0, 0, 0, 0, 0, 0]])
    lengths = torch.tensor([7, 3, 0])
    tensors = {f"state.{k}": v.clone() for k, v in head.state_dict().items()}
    tensors.update({"input.visual_features": features, "input.caption_tokens": tokens,
                    "input.caption_lengths": lengths})
    head.eval()
    with torch.no_grad():
        tensors["eval.logits"] = head(features, tokens, lengths)
    head.train()  # dropout is 0: same function, with gradients
    logits = head(features, tokens, lengths)
    weights = torch.randn(logits.shape, generator=generator)
    tensors["train.loss_weights"] = weights
    (logits * weights).sum().backward()
    params = dict(head.named_parameters())
    for key in HEAD_GRAD_KEYS:
        name = "embedding.words.weight" if key == "output.weight" else key
        tensors[f"grad.{key}"] = params[name].grad
    assert torch.isfinite(tensors["eval.logits"]).all()
    return tensors


def loss_fixture(generator: torch.Generator) -> dict[str, torch.Tensor]:
    ce = nn.CrossEntropyLoss(ignore_index=PAD)
    # Row 0 has a real <unk> target (ignored); row 2 is only [SOS]: no target at all.
    caption, noitpac, lengths = pad_reversed([[SOS, 5, 0, 7, 3, EOS], [SOS, 9, EOS], [SOS]])
    tensors = {"caption_tokens": caption, "noitpac_tokens": noitpac, "caption_lengths": lengths}
    for scale_name, scale in [("", 3.0), ("large.", 1000.0)]:
        lf = (scale * torch.randn(3, 6, 11, generator=generator)).requires_grad_()
        lb = (scale * torch.randn(3, 6, 11, generator=generator)).requires_grad_()
        forward = ce(lf[:, :-1].reshape(-1, 11), caption[:, 1:].reshape(-1))
        backward = ce(lb[:, :-1].reshape(-1, 11), noitpac[:, 1:].reshape(-1))
        (forward + backward).backward()
        tensors.update({
            f"{scale_name}forward_logits": lf.detach(), f"{scale_name}backward_logits": lb.detach(),
            f"{scale_name}captioning_forward": forward.detach().reshape(1),
            f"{scale_name}captioning_backward": backward.detach().reshape(1),
            f"{scale_name}loss": (forward + backward).detach().reshape(1),
            f"{scale_name}grad.forward_logits": lf.grad, f"{scale_name}grad.backward_logits": lb.grad,
        })

    def unique_ce(logits, labels, ignore):
        logprobs = F.log_softmax(logits, dim=1)
        loss = torch.tensor(0.0)
        for i in range(logits.size(0)):
            unique = [t for t in labels[i].unique().tolist() if t not in ignore]
            loss = loss - logprobs[i, unique].mean()
        return loss / logits.size(0)

    for name, v, labels, ignore in [
        ("token_classification", 12,
         torch.tensor([[1, 5, 5, 7, 2, 0, 0, 0], [1, 4, 9, 4, 11, 3, 2, 0], [1, 6, 2, 0, 0, 0, 0, 0]]),
         [0, 1, 2, 3]),
        ("multilabel", 9, torch.tensor([[3, 3, 5, 0, 0], [1, 8, 2, 7, 0], [4, 0, 0, 0, 0]]), [0]),
    ]:
        logits = (2.0 * torch.randn(3, v, generator=generator)).requires_grad_()
        loss = unique_ce(logits, labels, ignore)
        loss.backward()
        tensors.update({f"{name}.logits": logits.detach(), f"{name}.labels": labels,
                        f"{name}.loss": loss.detach().reshape(1), f"{name}.grad": logits.grad})
    return tensors


MODEL_GRAD_KEYS = [
    "visual.cnn.conv1.weight", "visual.cnn.layer4.0.conv3.weight",
    "visual.cnn.layer1.0.downsample.1.weight", "textual.visual_projection.weight",
    "textual.embedding.words.weight", "textual.embedding.positions.weight",
    "textual.embedding.layer_norm.bias", "textual.output.bias",
    "textual.transformer.layers.0.self_attn.in_proj_weight",
    "textual.transformer.layers.0.multihead_attn.out_proj.weight",
    "backward_textual.transformer.layers.0.linear1.weight",
    "backward_textual.transformer.layers.0.self_attn.in_proj_bias",
    "backward_textual.transformer.layers.0.norm3.bias",
]


def build_model(generator: torch.Generator, eos_bias: float):
    cnn = NarrowResNet(Bottleneck, [1, 1, 1, 1], stem=4)
    from backbone import randomise
    randomise(cnn, generator)
    cnn.fc = nn.Identity()
    textual = TextualHead(128, 50, 16, 1, 2, 64, dropout=0.0, max_caption_length=30)
    model = CaptioningModel(cnn, textual, backward=True)
    # The two decoder stacks start equal (deepcopy); give each its own values.
    randomise_textual(model.textual, generator, word_scale=1.0)
    randomise_textual(model.backward_textual.transformer, generator)
    with torch.no_grad():
        model.textual.output.bias[EOS] += eos_bias
    return model


def model_fixture(seed: int, eos_bias: float):
    generator = torch.Generator().manual_seed(seed)
    model = build_model(generator, eos_bias)
    images = torch.randn(2, 3, 64, 48, generator=generator)
    caption, noitpac, lengths = pad_reversed([[SOS, 11, 23, 0, 7, 42, EOS], [SOS, 30, 4, EOS]])
    tensors = {"input.images": images, "input.caption_tokens": caption,
               "input.noitpac_tokens": noitpac, "input.caption_lengths": lengths}

    train = copy.deepcopy(model).train()
    loss, forward, backward = train(images, caption, noitpac, lengths)
    loss.backward()
    tensors.update({"train.loss": loss.detach().reshape(1),
                    "train.captioning_forward": forward.detach().reshape(1),
                    "train.captioning_backward": backward.detach().reshape(1)})
    params = dict(train.named_parameters())
    for key in MODEL_GRAD_KEYS:
        tensors[f"grad.{key}"] = params[key].grad

    model.eval()
    margins = Margins()
    with torch.no_grad():
        features = model.visual(images)
        tensors["eval.features"] = features
        tensors["eval.forward_logits"] = model.textual(features, caption, lengths)
        tensors["eval.backward_logits"] = model.backward_textual(features, noitpac, lengths)
        for name, mode, beam in [("upstream", "upstream", 5), ("correct", "correct", 5),
                                 ("greedy", "correct", 1)]:
            tokens, logprob = beam_search(model.textual, features, mode, beam_size=beam,
                                          margins=margins)
            tensors[f"decode.{name}"] = tokens
            tensors[f"decode.{name}_logprob"] = logprob
    return model, tensors, margins.smallest


def main() -> None:
    for out in (TEXTUAL_OUT, LOSS_OUT, MODEL_OUT):
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(20240607)

    for prenorm, name in [(False, "postnorm"), (True, "prenorm")]:
        tensors = head_fixture(prenorm, generator)
        save_file({k: v.contiguous() for k, v in tensors.items()},
                  TEXTUAL_OUT / f"head_{name}.safetensors")
    save_file({k: v.contiguous() for k, v in loss_fixture(generator).items()},
              LOSS_OUT / "losses.safetensors")

    # Search a seed whose decisions all win by a margin far above float noise, with captions
    # that end early, differ between the two beam-search modes, and use the repetition ban.
    def first_eos(rows):
        found = [(row == EOS).nonzero()[:1].flatten().tolist() for row in rows]
        return [f[0] if f else None for f in found]

    # The search from 0 first succeeds at BEAM_SEED; start there so regenerating is quick.
    for seed in range(BEAM_SEED, 200):
        model, tensors, margin = model_fixture(seed, eos_bias=-1.0)
        up, co = tensors["decode.upstream"], tensors["decode.correct"]
        ends = [first_eos(tensors[f"decode.{n}"]) for n in ("upstream", "correct", "greedy")]
        ends_early = all(e is not None and 3 <= e < 20 for row in ends for e in row)
        differ = all(not torch.equal(u[:3], c[:3]) for u, c in zip(up, co))
        if margin > 1e-3 and ends_early and differ:
            print(f"seed {seed}: smallest decision margin {margin:.3e}")
            break
    else:
        raise SystemExit("no seed gives a robust beam-search fixture")

    state = model.state_dict()
    # Optimizer state over copies: stepping the model's own parameters would change `state`.
    copies = [p.detach().clone().requires_grad_() for p in list(model.parameters())[:2]]
    optimizer = torch.optim.SGD(copies, lr=0.1, momentum=0.9)
    for p in optimizer.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    optimizer.step()
    torch.save({"model": state, "optimizer": optimizer.state_dict(), "iteration": 2000},
               MODEL_OUT / "bicaptioning_tiny.pth")
    forward_only = {k: v for k, v in state.items() if not k.startswith("backward_textual.")}
    torch.save({"model": forward_only}, MODEL_OUT / "captioning_tiny.pth")
    save_file({k: v.contiguous() for k, v in tensors.items()},
              MODEL_OUT / "bicaptioning_tiny_reference.safetensors")

    for out in (TEXTUAL_OUT, LOSS_OUT, MODEL_OUT):
        for path in sorted(out.iterdir()):
            print(f"{path.relative_to(ROOT)}: {os.path.getsize(path)} bytes")
    for name in ("upstream", "correct", "greedy"):
        print(name, tensors[f"decode.{name}"].tolist(), tensors[f"decode.{name}_logprob"].tolist())
    print(f"torch {torch.__version__}")


if __name__ == "__main__":
    main()
