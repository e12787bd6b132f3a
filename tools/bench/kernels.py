#!/usr/bin/env python3
"""PyTorch side of `cargo bench --bench kernels`: the same rows, shapes and ids, on the CPU.

Every row of `benches/kernels.rs` has a twin here with the same id (`group/name`), the same
work count (FLOPs, or bytes of the input for memory-bound rows) and the same computation:
convolutions through `aten.convolution_backward` for the two gradients, `nn.BatchNorm2d` in
train and eval mode, the textual head's matmuls as plain products, attention from plain ops,
`torch.optim.SGD` over tensors shaped like R50-L1-H1024's parameters, and torchvision's
ResNet-50 (without avgpool/fc, `zero_init_residual=True`) for the train step and inference;
`train_step/*` rows are whole VirTex pretraining iterations on our PyTorch VirTex
(`tools/reference/textual.py`: torchvision ResNet + `nn.TransformerDecoder` head, both
captioning losses) with upstream's optimiser (SGD momentum 0.9, weight decay 1e-4 off for the
no-decay group, CNN LR group, Lookahead k 5 alpha 0.5, `clip_grad_norm_(10)`, LambdaLR).

Timing mirrors criterion's flat sampling: a short warm-up, then 10 samples of a fixed number
of iterations (at least one, about 1 s in all); the median time per iteration is reported.

Usage:
  ~/.venvs/ref/bin/python tools/bench/kernels.py [--threads 2] [--filter REGEX] [--json out.json]
`tools/bench/compare.py` runs this and `cargo bench --bench kernels` and prints both.
"""
import argparse
import json
import math
import re
import statistics
import sys
import time

import pathlib

import torch
import torch.nn.functional as F
import torchvision

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "reference"))

SAMPLES = 10
MEASUREMENT_S = 1.0
WARM_UP_S = 0.3


def resnet50_conv_shapes(size):
    """The distinct convolutions of ResNet-50 at size², named as in kernels.rs."""
    shapes, seen = [], set()

    def push(stage, c_in, c_out, kernel, stride, spatial):
        name = f"{stage}_{kernel}x{kernel}s{stride}_{c_in}to{c_out}_{spatial}"
        if name not in seen:
            seen.add(name)
            shapes.append(dict(name=name, c_in=c_in, c_out=c_out, kernel=kernel,
                               stride=stride, size=spatial))

    push("stem", 3, 64, 7, 2, size)
    spatial, in_channels = size // 4, 64
    for stage, planes, blocks, stride in [(1, 64, 3, 1), (2, 128, 4, 2), (3, 256, 6, 2),
                                          (4, 512, 3, 2)]:
        for block in range(blocks):
            s = stride if block == 0 else 1
            out_channels = planes * 4
            push(f"l{stage}", in_channels, planes, 1, 1, spatial)
            push(f"l{stage}", planes, planes, 3, s, spatial)
            if block == 0:
                push(f"l{stage}", in_channels, out_channels, 1, s, spatial)
            spatial //= s
            push(f"l{stage}", planes, out_channels, 1, 1, spatial)
            in_channels = out_channels
    return shapes


def out_size(shape):
    k = shape["kernel"]
    return (shape["size"] + 2 * (k // 2) - k) // shape["stride"] + 1


def conv_flops(shape, batch):
    o = out_size(shape)
    return 2 * batch * shape["c_out"] * o * o * shape["c_in"] * shape["kernel"] ** 2


class Rows:
    """Collects (id, make) pairs; `make()` returns (closure, work, unit) when the row runs."""

    def __init__(self, pattern):
        self.pattern = re.compile(pattern) if pattern else None
        self.rows = []

    def add(self, row_id, make):
        if self.pattern is None or self.pattern.search(row_id):
            self.rows.append((row_id, make))


def measure(fn):
    """Median seconds per iteration, criterion-flat style."""
    start = time.perf_counter()
    runs = 0
    while True:
        fn()
        runs += 1
        if time.perf_counter() - start >= WARM_UP_S:
            break
    estimate = (time.perf_counter() - start) / runs
    iters = max(1, math.ceil(MEASUREMENT_S / (SAMPLES * estimate)))
    per_iter = []
    for _ in range(SAMPLES):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        per_iter.append((time.perf_counter() - t0) / iters)
    return statistics.median(per_iter)


def conv_rows(rows, batches, size):
    for batch in batches:
        for shape in resnet50_conv_shapes(size):
            for group, mask in [("conv_fwd", None), ("conv_bwd_data", [True, False, False]),
                                ("conv_bwd_weight", [False, True, False])]:
                def make(shape=shape, batch=batch, mask=mask):
                    k, s = shape["kernel"], shape["stride"]
                    x = torch.rand(batch, shape["c_in"], shape["size"], shape["size"])
                    w = torch.rand(shape["c_out"], shape["c_in"], k, k)
                    o = out_size(shape)
                    dy = torch.rand(batch, shape["c_out"], o, o)
                    pad = k // 2
                    if mask is None:
                        fn = lambda: F.conv2d(x, w, None, s, pad)
                    else:
                        fn = lambda: torch.ops.aten.convolution_backward(
                            dy, x, w, None, [s, s], [pad, pad], [1, 1], False, [0, 0], 1, mask)
                    return fn, conv_flops(shape, batch), "flop"
                rows.add(f"{group}/b{batch}_{shape['name']}", make)


def nbytes(dims):
    return 4 * math.prod(dims)


def norm_eltwise_rows(rows):
    for dims in [(8, 64, 112, 112), (8, 256, 56, 56), (8, 2048, 7, 7)]:
        shape = f"{dims[0]}x{dims[1]}x{dims[2]}"

        def make_train(dims=dims):
            norm = torch.nn.BatchNorm2d(dims[1]).train()
            x = torch.randn(*dims)
            return (lambda: norm(x)), nbytes(dims), "bytes"

        def make_fwd_bwd(dims=dims):
            norm = torch.nn.BatchNorm2d(dims[1]).train()
            x, g = torch.randn(*dims), torch.randn(*dims)

            def fn():
                inp = x.detach().requires_grad_()
                (norm(inp) * g).sum().backward()
                norm.zero_grad(set_to_none=True)
                return inp.grad
            return fn, nbytes(dims), "bytes"

        def make_eval(dims=dims):
            norm = torch.nn.BatchNorm2d(dims[1]).eval()
            x = torch.randn(*dims)

            def fn():
                with torch.no_grad():
                    return norm(x)
            return fn, nbytes(dims), "bytes"

        rows.add(f"batchnorm/fwd_train_{shape}", make_train)
        rows.add(f"batchnorm/fwd_bwd_{shape}", make_fwd_bwd)
        rows.add(f"batchnorm/fwd_eval_{shape}", make_eval)

    dims, shape = (8, 256, 56, 56), "8x256x56"

    def no_grad(f):
        def fn():
            with torch.no_grad():
                return f()
        return fn

    def relu_fwd():
        x = torch.randn(*dims)
        return no_grad(lambda: F.relu(x)), nbytes(dims), "bytes"

    def relu_fwd_bwd():
        x, g = torch.randn(*dims), torch.randn(*dims)

        def fn():
            inp = x.detach().requires_grad_()
            (F.relu(inp) * g).sum().backward()
            return inp.grad
        return fn, nbytes(dims), "bytes"

    def add_fwd():
        x, y = torch.randn(*dims), torch.randn(*dims)
        return no_grad(lambda: x + y), nbytes(dims), "bytes"

    def add_fwd_bwd():
        x, y, g = torch.randn(*dims), torch.randn(*dims), torch.randn(*dims)

        def fn():
            lhs, rhs = x.detach().requires_grad_(), y.detach().requires_grad_()
            ((lhs + rhs) * g).sum().backward()
            return lhs.grad, rhs.grad
        return fn, nbytes(dims), "bytes"

    pool_dims = (8, 64, 112, 112)

    def pool_fwd():
        x = torch.randn(*pool_dims)
        return no_grad(lambda: F.max_pool2d(x, 3, 2, 1)), nbytes(pool_dims), "bytes"

    def pool_fwd_bwd():
        x, g = torch.randn(*pool_dims), torch.randn(8, 64, 56, 56)

        def fn():
            inp = x.detach().requires_grad_()
            (F.max_pool2d(inp, 3, 2, 1) * g).sum().backward()
            return inp.grad
        return fn, nbytes(pool_dims), "bytes"

    rows.add(f"eltwise/relu_fwd_{shape}", relu_fwd)
    rows.add(f"eltwise/relu_fwd_bwd_{shape}", relu_fwd_bwd)
    rows.add(f"eltwise/add_fwd_{shape}", add_fwd)
    rows.add(f"eltwise/add_fwd_bwd_{shape}", add_fwd_bwd)
    rows.add("eltwise/maxpool3x3s2_fwd_8x64x112", pool_fwd)
    rows.add("eltwise/maxpool3x3s2_fwd_bwd_8x64x112", pool_fwd_bwd)


def matmul_shapes(hidden):
    tokens, memory, ffn = 8 * 30, 8 * 49, 4 * hidden
    return [
        (f"visual_proj_h{hidden}", (memory, 2048, hidden)),
        (f"self_qkv_h{hidden}", (tokens, hidden, 3 * hidden)),
        (f"cross_kv_h{hidden}", (memory, hidden, 2 * hidden)),
        (f"attn_out_h{hidden}", (tokens, hidden, hidden)),
        (f"ffn_up_h{hidden}", (tokens, hidden, ffn)),
        (f"ffn_down_h{hidden}", (tokens, ffn, hidden)),
        (f"vocab_h{hidden}", (tokens, hidden, 10_000)),
    ]


def matmul_rows(rows):
    for hidden in (1024, 2048):
        for name, (m, k, n) in matmul_shapes(hidden):
            def make(m=m, k=k, n=n):
                lhs, rhs = torch.rand(m, k), torch.rand(k, n)

                def fn():
                    with torch.no_grad():
                        return lhs @ rhs
                return fn, 2 * m * k * n, "flop"
            rows.add(f"matmul/{name}_{m}x{k}x{n}", make)


def attention_rows(rows):
    """The twin of the burn rows: torch's nn.MultiheadAttention (what upstream's decoder layer
    runs), causal self-attention over 30 tokens and cross-attention from them to 49 visual
    tokens, batch 8, dropout 0."""
    batch, tokens = 8, 30
    for hidden in (1024, 2048):
        heads = hidden // 64
        for kind, keys in (("self_causal", tokens), ("cross", 49)):
            flops = (2 * batch * (2 * tokens * hidden * hidden + 2 * keys * hidden * hidden)
                     + 2 * 2 * batch * tokens * keys * hidden)
            name = f"mha_{kind}_h{hidden}_b{batch}_t{tokens}_s{keys}"

            def inputs(hidden=hidden, heads=heads, keys=keys):
                module = torch.nn.MultiheadAttention(hidden, heads, dropout=0.0, batch_first=True)
                return (module, torch.rand(batch, tokens, hidden), torch.rand(batch, keys, hidden),
                        torch.rand(batch, tokens, hidden))

            def forward(module, x, memory, kind=kind):
                if kind == "cross":
                    return module(x, memory, memory, need_weights=False)[0]
                mask = torch.ones(tokens, tokens, dtype=torch.bool).triu(1)
                return module(x, x, x, attn_mask=mask, need_weights=False)[0]

            def make_fwd(inputs=inputs, forward=forward, flops=flops):
                module, x, memory, _ = inputs()

                def fn():
                    with torch.no_grad():
                        return forward(module, x, memory)
                return fn, flops, "flop"

            def make_fwd_bwd(inputs=inputs, forward=forward, flops=flops):
                module, x0, memory, g = inputs()

                def fn():
                    x = x0.detach().requires_grad_()
                    module.zero_grad(set_to_none=True)
                    (forward(module, x, memory) * g).sum().backward()
                    return x.grad, module.in_proj_weight.grad
                return fn, flops, "flop"

            rows.add(f"attention/{name}_fwd", make_fwd)
            rows.add(f"attention/{name}_fwd_bwd", make_fwd_bwd)


def r50_l1_h1024_parameter_shapes():
    shapes = []
    in_channels = 64
    convs = [(3, 64, 7)]
    for planes, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for block in range(blocks):
            convs += [(in_channels, planes, 1), (planes, planes, 3), (planes, planes * 4, 1)]
            if block == 0:
                convs.append((in_channels, planes * 4, 1))
            in_channels = planes * 4
    for c_in, c_out, k in convs:
        shapes += [(c_out, c_in, k, k), (c_out,), (c_out,)]
    h = 1024
    shapes += [(10_000, h), (30, h), (h,), (h,), (h, 2048), (h,), (10_000,)]
    for _direction in range(2):
        for _attention in range(2):
            shapes += [(3 * h, h), (3 * h,), (h, h), (h,)]
        shapes += [(4 * h, h), (4 * h,), (h, 4 * h), (h,)]
        shapes += [(h,)] * 6
    return shapes


def optim_rows(rows):
    shapes = r50_l1_h1024_parameter_shapes()
    count = sum(math.prod(s) for s in shapes)

    def make():
        params = [torch.rand(math.prod(s)).requires_grad_() for s in shapes]
        for p in params:
            p.grad = torch.rand_like(p)
        opt = torch.optim.SGD(params, lr=0.2, momentum=0.9, weight_decay=1e-4)
        opt.step()  # creates the momentum buffers, as the burn row starts with them

        def fn():
            with torch.no_grad():
                opt.step()
        return fn, 5 * count * 4, "bytes"

    rows.add("optim/sgd_momentum_r50_l1_h1024", make)


def resnet50():
    model = torchvision.models.resnet50(weights=None, zero_init_residual=True)
    model.avgpool = torch.nn.Identity()
    model.fc = torch.nn.Identity()
    return model


def resnet_rows(rows):
    def flops(batch, size, factor):
        return int(factor * 2.0 * 4.09e9 * batch * size * size / (224.0 * 224.0))

    def make_train():
        model = resnet50().train()
        images = torch.rand(4, 3, 128, 128)

        def fn():
            model.zero_grad(set_to_none=True)
            model(images).mean().backward()
            return model.conv1.weight.grad
        return fn, flops(4, 128, 3.0), "flop"

    def make_inference():
        model = resnet50().eval()
        images = torch.rand(8, 3, 224, 224)

        def fn():
            with torch.inference_mode():
                return model(images)
        return fn, flops(8, 224, 1.0), "flop"

    rows.add("resnet50/train_step_b4_128", make_train)
    rows.add("resnet50/inference_b8_224", make_inference)


SAMPLE_VOCAB_SIZE = 400  # crates/virtex-data/sample/vocab/coco_sample.model


def virtex_step_rows(rows):
    """`train_step/{preset}_b8`: the same presets, shapes and optimiser as kernels.rs."""
    from backbone import NarrowResNet
    from lookahead import Lookahead, multiplier
    from textual import CaptioningModel, TextualHead
    from torchvision.models.resnet import BasicBlock, Bottleneck

    presets = {
        # name: (block, layers, feature size, vocab, hidden, heads, size, cnn_lr, lr, warmup)
        "small_cpu": (BasicBlock, [2, 2, 2, 2], 512, SAMPLE_VOCAB_SIZE, 64, 1, 64, 0.05, 0.01,
                      10),
        "bicaptioning_R_50_L1_H1024": (Bottleneck, [3, 4, 6, 3], 2048, 10000, 1024, 16, 224,
                                       0.2, 0.001, 10000),
    }

    def make(name, batch):
        block, layers, features, vocab, hidden, heads, size, cnn_lr, lr, warmup = presets[name]
        cnn = NarrowResNet(block, layers, stem=64)
        cnn.fc = torch.nn.Identity()
        textual = TextualHead(features, vocab, hidden, 1, heads, 4 * hidden, dropout=0.1,
                              max_caption_length=30)
        model = CaptioningModel(cnn, textual, backward=True).train()
        no_decay = re.compile(r".*textual.(embedding|transformer).*(norm.*|bias)")
        groups = {"cnn": [], "decay": [], "no_decay": []}
        for path, param in model.named_parameters():  # shared tensors are listed once
            key = "cnn" if "cnn" in path else "no_decay" if no_decay.match(path) else "decay"
            groups[key].append(param)
        sgd = torch.optim.SGD([
            {"params": groups["cnn"], "lr": cnn_lr, "weight_decay": 1e-4},
            {"params": groups["decay"], "lr": lr, "weight_decay": 1e-4},
            {"params": groups["no_decay"], "lr": lr, "weight_decay": 0.0},
        ], lr=lr, momentum=0.9)
        optimizer = Lookahead(sgd, k=5, alpha=0.5)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            sgd, lambda step: multiplier("cosine", step, warmup, 500000))
        gen = torch.Generator().manual_seed(0)
        lengths = torch.randint(15, 31, (batch,), generator=gen)
        tokens = torch.zeros(batch, 30, dtype=torch.long)
        reversed_tokens = torch.zeros_like(tokens)
        for i, n in enumerate(lengths.tolist()):
            caption = torch.cat([torch.tensor([1]), torch.randint(3, vocab, (n - 2,), generator=gen),
                                 torch.tensor([2])])
            tokens[i, :n] = caption
            reversed_tokens[i, :n] = caption.flip(0)
        images = torch.randn(batch, 3, size, size, generator=gen)
        params = [p for group in sgd.param_groups for p in group["params"]]

        def fn():
            sgd.zero_grad(set_to_none=True)
            loss, _, _ = model(images, tokens, reversed_tokens, lengths)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            optimizer.step()
            schedule.step()
            return loss
        return fn, batch, "img"

    for name in presets:
        rows.add(f"train_step/{name}_b8", lambda name=name: make(name, 8))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--filter", default="", help="regex on row ids, as criterion's filter")
    parser.add_argument("--batches", default="8", help="conv batch sizes, e.g. 8,32")
    parser.add_argument("--size", type=int, default=224,
                        help="image size of the conv rows' layer shapes (VIRTEX_BENCH_CONV_SIZE)")
    parser.add_argument("--json", help="write {id: {seconds, work, unit}} here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    rows = Rows(args.filter)
    conv_rows(rows, [int(b) for b in args.batches.split(",")], args.size)
    norm_eltwise_rows(rows)
    matmul_rows(rows)
    attention_rows(rows)
    optim_rows(rows)
    resnet_rows(rows)
    virtex_step_rows(rows)

    results = {}
    print(f"# torch {torch.__version__}, {args.threads} threads", file=sys.stderr)
    for row_id, make in rows.rows:
        fn, work, unit = make()
        seconds = measure(fn)
        del fn
        if unit == "img":
            rate, label = work / seconds, "img/s"
        else:
            rate, label = work / seconds / 1e9, "GFLOP/s" if unit == "flop" else "GB/s"
        print(f"{row_id:60s} {seconds * 1e3:10.3f} ms {rate:9.2f} {label}", file=sys.stderr)
        results[row_id] = {"seconds": seconds, "work": work, "unit": unit}
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"torch": torch.__version__, "threads": args.threads, "rows": results},
                      out, indent=1)


if __name__ == "__main__":
    main()
