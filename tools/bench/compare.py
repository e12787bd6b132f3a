#!/usr/bin/env python3
"""Runs `cargo bench --bench kernels` and `tools/bench/kernels.py` with the same thread count
and filter, then prints one side-by-side table with Burn ÷ PyTorch time ratios.

Usage (from anywhere in the repository):
  ~/.venvs/ref/bin/python tools/bench/compare.py [--threads 2] [--filter REGEX]
      [--markdown] [--skip-burn] [--skip-torch] [--torch-json FILE] [--interleave ROUNDS]

- Burn's numbers are criterion's median per-iteration times, read from
  `target/criterion/**/new/{benchmark,estimates}.json` written by this run (or by the latest run
  with `--skip-burn`). `RAYON_NUM_THREADS` is set to `--threads`; `VIRTEX_KERNELS` and
  `VIRTEX_BENCH_*` pass through.
- PyTorch's come from `kernels.py` with `torch.set_num_threads(--threads)`, run by the venv
  interpreter (`~/.venvs/ref/bin/python`, or `--python`).
- `--interleave ROUNDS`: instead of all of Burn's rows and then all of PyTorch's (minutes
  apart, on a VM whose speed drifts by ±25 % within minutes), each row runs on both sides back to
  back, Burn first in odd rounds and PyTorch first in even ones; the table shows each side's
  median over the rounds and every round's ratio.
- Ratio > 1: Burn is slower. Throughput is GFLOP/s for FLOP-counted rows and GB/s (bytes of the
  input) for memory-bound rows.
"""
import argparse
import json
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def target_dir():
    out = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return pathlib.Path(json.loads(out)["target_directory"])


def cpu_name():
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_burn(args, env):
    command = ["cargo", "bench", "--bench", "kernels", "--"]
    if args.filter:
        command.append(args.filter)
    print("$ RAYON_NUM_THREADS={} {}".format(args.threads, " ".join(command)), file=sys.stderr)
    # Criterion's report goes to our stderr as it runs; the table is printed at the end.
    subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=sys.stderr)


def read_burn(since, pattern):
    """{id: (seconds, work, unit)} from criterion's JSON files newer than `since`."""
    rows = {}
    base = target_dir() / "criterion"
    for bench in base.glob("**/new/benchmark.json"):
        estimates = bench.with_name("estimates.json")
        if not estimates.exists() or estimates.stat().st_mtime < since:
            continue
        meta = json.loads(bench.read_text())
        row_id = meta["full_id"]
        if pattern and not re.search(pattern, row_id):
            continue
        median_ns = json.loads(estimates.read_text())["median"]["point_estimate"]
        throughput = meta.get("throughput") or {}
        if "Elements" in throughput:
            # train_step rows count images; every other Elements row counts FLOPs.
            unit = "img" if row_id.startswith("train_step/") else "flop"
            work = throughput["Elements"]
        elif "Bytes" in throughput:
            work, unit = throughput["Bytes"], "bytes"
        else:
            work, unit = None, None
        rows[row_id] = (median_ns * 1e-9, work, unit)
    return rows


def run_torch(args, path):
    command = [args.python, str(HERE / "kernels.py"), "--threads", str(args.threads),
               "--json", str(path), "--batches", args.batches,
               "--size", str(args.size)]
    if args.filter:
        command += ["--filter", args.filter]
    print("$ " + " ".join(command), file=sys.stderr)
    subprocess.run(command, cwd=ROOT, check=True)


def read_torch(path):
    data = json.loads(pathlib.Path(path).read_text())
    rows = {k: (v["seconds"], v["work"], v["unit"]) for k, v in data["rows"].items()}
    return rows, data.get("torch", "?")


def fmt_time(seconds):
    if seconds is None:
        return "—"
    if seconds >= 1.0:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


def fmt_rate(row):
    if row is None or row[1] is None:
        return "—"
    seconds, work, unit = row
    if unit == "img":
        return f"{work / seconds:.2f} img/s"
    rate = work / seconds / 1e9
    return f"{rate:.1f} {'GFLOP/s' if unit == 'flop' else 'GB/s'}"


def table(burn, torch_rows, markdown):
    ids = sorted(set(burn) | set(torch_rows), key=lambda i: (order(i), i))
    header = ["row", "Burn", "Burn rate", "PyTorch", "PyTorch rate", "Burn ÷ PyTorch"]
    lines = []
    for row_id in ids:
        b, t = burn.get(row_id), torch_rows.get(row_id)
        ratio = f"{b[0] / t[0]:.2f}" if b and t else "—"
        lines.append([row_id, fmt_time(b and b[0]), fmt_rate(b), fmt_time(t and t[0]),
                      fmt_rate(t), ratio])
    return render_table(header, lines, markdown)


def render_table(header, lines, markdown):
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(line) + " |" for line in lines]
        return "\n".join(out)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    render = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))
    return "\n".join([render(header), render(["-" * w for w in widths])] +
                     [render(line) for line in lines])


GROUP_ORDER = ["train_step", "resnet50", "conv_fwd", "conv_bwd_data", "conv_bwd_weight", "batchnorm",
               "eltwise", "matmul", "attention", "optim"]


def order(row_id):
    group = row_id.split("/")[0]
    return GROUP_ORDER.index(group) if group in GROUP_ORDER else len(GROUP_ORDER)


def burn_row_ids(args, env):
    """The ids of the criterion rows `--filter` selects (`cargo bench … -- --list`)."""
    command = ["cargo", "bench", "--bench", "kernels", "--", "--list"]
    if args.filter:
        command.insert(-1, args.filter)
    out = subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True,
                         text=True).stdout
    return [line.rsplit(": ", 1)[0] for line in out.splitlines() if line.endswith(": benchmark")]


def interleaved(args, env, rounds):
    """{id: [(burn_seconds, torch_seconds), ...]} and the rows' work, one row at a time."""
    pairs, work = {}, {}
    torch_version = "?"
    for round_index in range(rounds):
        for row_id in burn_row_ids(args, env):
            exact = argparse.Namespace(**vars(args))
            exact.filter = "^" + re.escape(row_id) + "$"
            sides = ["burn", "torch"] if round_index % 2 == 0 else ["torch", "burn"]
            measured = {}
            for side in sides:
                if side == "burn":
                    started = time.time()
                    run_burn(exact, env)
                    measured["burn"] = read_burn(started, exact.filter).get(row_id)
                else:
                    path = pathlib.Path(args.torch_json).with_suffix(".row.json")
                    run_torch(exact, path)
                    rows, torch_version = read_torch(path)
                    measured["torch"] = rows.get(row_id)
            b, t = measured["burn"], measured["torch"]
            if b:
                work[row_id] = b
            pairs.setdefault(row_id, []).append((b and b[0], t and t[0]))
    return pairs, work, torch_version


def interleaved_table(pairs, work, markdown):
    header = ["row", "Burn (median)", "Burn rate", "PyTorch (median)",
              "Burn ÷ PyTorch (median)", "Burn ÷ PyTorch per round"]
    lines = []
    for row_id in sorted(pairs, key=lambda i: (order(i), i)):
        burn = [b for b, _ in pairs[row_id] if b]
        torch_times = [t for _, t in pairs[row_id] if t]
        ratios = [b / t for b, t in pairs[row_id] if b and t]
        b_med = statistics.median(burn) if burn else None
        rate = fmt_rate((b_med, work[row_id][1], work[row_id][2])) if burn else "—"
        lines.append([row_id, fmt_time(b_med), rate,
                      fmt_time(statistics.median(torch_times) if torch_times else None),
                      f"{statistics.median(ratios):.2f}" if ratios else "—",
                      " / ".join(f"{r:.2f}" for r in ratios) or "—"])
    return render_table(header, lines, markdown)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--filter", default="", help="regex on row ids (criterion's filter)")
    parser.add_argument("--batches", default=os.environ.get("VIRTEX_BENCH_BATCHES", "8"))
    parser.add_argument("--size", default=os.environ.get("VIRTEX_BENCH_CONV_SIZE", "224"),
                        help="image size for the conv rows' layer shapes")
    parser.add_argument("--python", default=str(pathlib.Path.home() / ".venvs/ref/bin/python"))
    parser.add_argument("--torch-json", default=str(ROOT / "target" / "kernels-torch.json"))
    parser.add_argument("--skip-burn", action="store_true", help="reuse criterion's last results")
    parser.add_argument("--skip-torch", action="store_true", help="reuse --torch-json")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--interleave", type=int, default=0, metavar="ROUNDS",
                        help="run each row on both sides back to back, ROUNDS times")
    args = parser.parse_args()

    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads),
               VIRTEX_BENCH_BATCHES=args.batches, VIRTEX_BENCH_CONV_SIZE=str(args.size))
    started = time.time()
    load_before = os.getloadavg()
    if args.interleave > 0:
        pairs, work, torch_version = interleaved(args, env, args.interleave)
        load_after = os.getloadavg()
        print(f"# {time.strftime('%Y-%m-%d %H:%M')}, {cpu_name()}, "
              f"{os.cpu_count()} CPUs, {args.threads} threads, torch {torch_version}, "
              f"interleaved {args.interleave} rounds, load average "
              f"{load_before[0]:.2f} before / {load_after[0]:.2f} after")
        print(interleaved_table(pairs, work, args.markdown))
        return
    if not args.skip_burn:
        run_burn(args, env)
    burn = read_burn(0 if args.skip_burn else started, args.filter)
    if not args.skip_torch:
        run_torch(args, args.torch_json)
    torch_rows, torch_version = read_torch(args.torch_json)
    load_after = os.getloadavg()

    print(f"# {time.strftime('%Y-%m-%d %H:%M')}, {cpu_name()}, "
          f"{os.cpu_count()} CPUs, {args.threads} threads (RAYON_NUM_THREADS / "
          f"torch.set_num_threads), torch {torch_version}, "
          f"VIRTEX_KERNELS={os.environ.get('VIRTEX_KERNELS', 'fast')}, load average "
          f"{load_before[0]:.2f} before / {load_after[0]:.2f} after")
    print(table(burn, torch_rows, args.markdown))


if __name__ == "__main__":
    main()
