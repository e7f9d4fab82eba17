"""Where the time of our training step goes: the model's forward/backward vs everything that is ours.

    .venv/bin/python bench/trainer/profile_step.py [--steps 12] [--padding-mode padding|pack]

The same CPU setup as ``bench_cpu.py`` (GPT-NeoX 6 x 256, batch 4 x 512, one process). A child
process builds the run with ``mft_trainer.train.setup``, takes 2 warm-up steps, then runs ``--steps``
steps of ``epoch_steps`` + ``train_step`` while py-spy samples it from outside (100 Hz, attached
after the warm-up, so setup is not in the profile). Each sample is attributed to the innermost frame
of a known kind:

- model forward: ``modeling_gpt_neox.py``; model backward: autograd's ``backward``;
- optimizer: ``torch/optim`` (AdamW's update, ``zero_grad``);
- ours: the loss (``loss.py``), batching (``collate``, ``epoch_steps``), collectives and clipping
  (``distributed.py``, ``accelerate.py``), and the rest of ``train_step``.

Printed: the share of each kind and the ratio of our overhead to the model's forward + backward.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WARMUP = 2

# (kind, test on "function (file)") from the innermost frame outwards; the first match wins.
KINDS: list[tuple[str, str]] = [
    ("model forward", "modeling_gpt_neox.py"),
    ("model backward", "backward (torch/autograd/"),
    ("model backward", "backward (torch/_tensor.py"),
    ("optimizer", "torch/optim/"),
    ("ours: loss", "mft_trainer/loss.py"),
    ("ours: batching", "mft_trainer/data/"),
    ("ours: batching", "epoch_steps (mft_trainer/train.py"),
    ("ours: collectives + clipping", "mft_trainer/distributed.py"),
    ("ours: collectives + clipping", "mft_trainer/accelerate.py"),
    ("ours: other step code", "train_step (mft_trainer/train.py"),
]


def child(steps: int, padding_mode: str, ready: Path) -> None:
    """The profiled process: warm up, tell the parent, run the measured steps, exit."""
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_cpu import trainer_config

    from mft_trainer.train import epoch_steps, setup, train_step

    with tempfile.TemporaryDirectory() as out:
        run = setup(trainer_config(padding_mode, steps, Path(out)))
        batches = epoch_steps(run)
        for _ in range(WARMUP):
            train_step(run, next(batches))
        ready.write_text(str(os.getpid()))
        time.sleep(1.0)  # py-spy attaches
        started = time.perf_counter()
        for _ in range(steps):
            train_step(run, next(batches))
        print(f"{steps} steps in {time.perf_counter() - started:.2f} s", flush=True)


def frames_of(stack: str) -> list[str]:
    """py-spy's raw frames ``function (file.py:line)``, without the line: ``function (file.py``."""
    return [frame.rsplit(":", 1)[0] for frame in stack.split(";")]


def attribute(raw: str) -> Counter:
    shares: Counter = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = frames_of(stack)
        if not any("train_step (" in f or "epoch_steps (" in f for f in frames):
            shares["outside the step (profiling driver)"] += int(count)
            continue
        kind = next((kind for frame in reversed(frames) for kind, test in KINDS if test in frame), "other")
        shares[kind] += int(count)
    return shares


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--padding-mode", default="padding", choices=["padding", "pack"])
    parser.add_argument("--save-profile", type=Path, help="also keep py-spy's raw (collapsed) profile here")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.steps, args.padding_mode, args.child)
        return 0

    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with tempfile.TemporaryDirectory() as tmp:
        ready, raw = Path(tmp) / "ready", Path(tmp) / "profile.txt"
        env = {**os.environ, "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}
        proc = subprocess.Popen([sys.executable, __file__, "--child", str(ready), "--steps", str(args.steps),
                                 "--padding-mode", args.padding_mode], env=env, cwd=REPO)
        while not ready.exists():
            if proc.poll() is not None:
                print(f"the profiled process exited with {proc.returncode}", file=sys.stderr)
                return 1
            time.sleep(0.2)
        profiler = subprocess.Popen([spy, "record", "--pid", ready.read_text(), "--rate", "100", "--format", "raw",
                                     "--output", str(raw), "--nonblocking"], stdout=subprocess.DEVNULL)
        if proc.wait() != 0:
            profiler.send_signal(signal.SIGINT)
            return 1
        profiler.wait(timeout=60)
        shares = attribute(raw.read_text())
        if args.save_profile:
            shutil.copy(raw, args.save_profile)

    total = sum(shares.values())
    print(f"\npy-spy: {total} samples of the training thread over {args.steps} steps ({args.padding_mode})")
    for kind, count in shares.most_common():
        print(f"  {100 * count / total:5.1f}%  {kind}")
    model = shares["model forward"] + shares["model backward"]
    ours = sum(count for kind, count in shares.items() if kind.startswith("ours"))
    print(f"\nours / model forward+backward: {ours / model:.3f}   "
          f"(ours {100 * ours / total:.1f}% of the step, optimizer {100 * shares['optimizer'] / total:.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
