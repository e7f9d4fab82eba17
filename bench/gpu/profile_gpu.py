"""Where our GPU step's time goes: torch.profiler over 3 steps (after 3 warm-up steps) of our run,
one of the benchmark's configurations (``--model``, ``--seq``; bf16, packed rows, 16384 tokens a
step). Prints the ops and kernels taking the most device time and the step's wall time under the
profiler; run by run.sh after the benchmark. ``--smoke``: the tiny model on CPU, as the tests run it."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gpu import FULL, SMOKE, batches, our_run, sync  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="410m", choices=FULL.models)
    parser.add_argument("--seq", type=int, default=2048, choices=FULL.seqs)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--rows", type=int, default=25, help="rows of the table")
    args = parser.parse_args()
    from mft_trainer.train import train_step

    plan = SMOKE if args.smoke else SimpleNamespace(**vars(FULL) | {"steps": 3})
    name, seq = (plan.models[0], plan.seqs[0]) if args.smoke else (args.model, args.seq)
    run, cfg, _ = our_run(plan, name, seq)
    steps = list(batches(plan, seq, cfg["vocab_size"]))
    for batch in steps[:plan.warmup]:
        train_step(run, [batch])
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for batch in steps[plan.warmup:]:
            train_step(run, [batch])
        sync()
    seconds = (time.perf_counter() - start) / plan.steps
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"profile: {name} seq {seq}, {seconds * 1000:.0f} ms per step (profiled)")
    print(prof.key_averages().table(sort_by=f"self_{device}_time_total", row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
