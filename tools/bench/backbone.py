#!/usr/bin/env python3
"""PyTorch side of `cargo bench --bench backbone`: torchvision ResNet-50 forward up to layer4,
batch 8, 224², eval mode, no autograd, float32, on the CPU with the same thread count.

Usage: ~/.venvs/ref/bin/python tools/bench/backbone.py [--threads 2] [--iters 10]
Prints mean seconds per batch and images/s.
"""
import argparse
import time

import torch
import torchvision


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = torchvision.models.resnet50(weights=None, zero_init_residual=True).eval()
    model.avgpool = torch.nn.Identity()  # VirTex returns right after layer4
    model.fc = torch.nn.Identity()
    images = torch.rand(args.batch, 3, 224, 224)
    with torch.inference_mode():
        for _ in range(2):
            model(images)
        times = []
        for _ in range(args.iters):
            start = time.perf_counter()
            model(images)
            times.append(time.perf_counter() - start)
    mean = sum(times) / len(times)
    print(f"pytorch resnet50_forward_b{args.batch}_224px: {mean:.4f} s/batch, "
          f"{args.batch / mean:.2f} img/s (threads={args.threads}, torch {torch.__version__})")


if __name__ == "__main__":
    main()
