"""Checkpoint save/load throughput through the trainer's own code vs raw sequential disk I/O (dd).

    .venv/bin/python bench/checkpoint/bench_checkpoint.py [--repeats 3] [--dir .bench/checkpoint]

State: GPT-NeoX 12 layers x 768 hidden (12 heads, Pythia-160M's body) with a 24,576-token vocabulary:
~123M fp32 parameters (~0.49 GB model.safetensors) + AdamW state after one step (exp_avg, exp_avg_sq:
~0.98 GB optimizer.pt), ~1.5 GB in all. One process, world size 1, CPU.

- save: the trainer's two halves as the training loop calls them (train.py ``save``):
  ``checkpoint.snapshot`` (host copy of weights, optimizer, scheduler, RNG) then ``checkpoint.persist``
  on the ``checkpoint.Writer`` thread (safetensors weights through ``save_pretrained``, tokenizer,
  ``torch.save`` of optimizer + scheduler, rank file, trainer_state.json, fsync of every file and the
  folder, atomic rename). "save" is the time until the checkpoint is on disk; "blocked" is the time
  until ``save`` returns control to the loop (the snapshot, with ``asyncSave: true``, the default).
- load: what a resume does: ``GPTNeoXForCausalLM.from_pretrained`` of the checkpoint (through
  ``mft_trainer.model.build_model``) + ``checkpoint.load_training_state`` (optimizer, scheduler,
  RNG/data position).
- dd: ``dd if=/dev/zero of=F bs=4M count=<same bytes> conv=fsync``, then ``dd if=F of=/dev/null bs=4M``.
- cold reads: the page cache cannot be dropped without root, so after each write the files' clean
  pages are evicted with ``posix_fadvise(DONTNEED)`` (checked with ``fincore`` when present) before
  reading; both dd and the checkpoint load read from the disk, not from memory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = ROOT / "trainer" / "mft_trainer" / "assets" / "tokenizer-tiny"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def evict(path: Path) -> None:
    """Drop the (clean, fsynced) pages of every file under ``path`` from the page cache."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def cached_bytes(path: Path) -> int | None:
    if not shutil.which("fincore"):
        return None
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    out = subprocess.run(["fincore", "-b", "-n", "-o", "RES", *map(str, files)], capture_output=True, text=True)
    try:
        return sum(int(x) for x in out.stdout.split())
    except ValueError:
        return None


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def build_state(layers: int, hidden: int, vocab: int):
    from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM

    from mft_trainer.accelerate import Accelerated

    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=hidden // 64,
                        intermediate_size=4 * hidden, max_position_embeddings=2048, use_cache=False)
    cfg._attn_implementation = "sdpa"
    model = GPTNeoXForCausalLM(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    for p in model.parameters():  # one step with synthetic gradients: the full AdamW state exists
        p.grad = torch.randn_like(p) * 1e-3
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    return Accelerated(model=model, optimizer=optimizer, strategy=["parallel_mode"]), scheduler, tokenizer


def save_once(root: Path, acc, scheduler, tokenizer, world, writer, step: int) -> tuple[float, float, Path]:
    """(seconds the loop is blocked, seconds until the checkpoint is on disk, its path)."""
    from mft_trainer import checkpoint

    name = checkpoint.name_for(step)
    trainer_state = {"state": {"step": step}, "valid_loss": None, "world_size": 1, "mode": "sft", "config": {}}
    rank_state = {"sampler": {"epoch": 0, "offset": step}}
    t = time.perf_counter()
    snap = checkpoint.snapshot(acc, scheduler, rank_state, world, writer.staging)
    writer.submit(lambda: checkpoint.persist(root, name, snap, model=acc.model, tokenizer=tokenizer,
                                             trainer_state=trainer_state))
    blocked = time.perf_counter() - t
    writer.wait()
    return blocked, time.perf_counter() - t, root / name


def load_once(path: Path, world, tokenizer) -> float:
    from mft_trainer import checkpoint
    from mft_trainer.accelerate import Accelerated
    from mft_trainer.model import build_model

    t = time.perf_counter()
    config = SimpleNamespace(model=SimpleNamespace(config={}, path=None))
    model = build_model(config, tokenizer, weights=path)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    checkpoint.load_training_state(path, Accelerated(model=model, optimizer=optimizer, strategy=["parallel_mode"]),
                                   scheduler, world)
    elapsed = time.perf_counter() - t
    assert len(optimizer.state) == len(list(model.parameters())), "optimizer state not restored"
    return elapsed


def dd(args: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(["dd", *args, "status=none"], check=True)
    return time.perf_counter() - t


def stats(values: list[float]) -> tuple[float, float]:
    return min(values), statistics.median(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=ROOT / ".bench" / "checkpoint")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=24576)
    args = parser.parse_args()

    from mft_trainer import checkpoint
    from mft_trainer.distributed import World

    torch.set_num_threads(os.cpu_count() or 1)
    world = World(rank=0, local_rank=0, size=1, device=torch.device("cpu"))
    acc, scheduler, tokenizer = build_state(args.layers, args.hidden, args.vocab)
    params = sum(p.numel() for p in acc.model.parameters())
    shutil.rmtree(args.dir, ignore_errors=True)
    args.dir.mkdir(parents=True)
    log(f"{params / 1e6:.1f}M parameters")

    rows: dict[str, list[float]] = {k: [] for k in ("dd write", "dd read", "save", "blocked", "load")}
    size = 0
    # One writer for the run, as in training: its staging memory is allocated by the first save
    # and reused by the next ones.
    writer = checkpoint.Writer(background=True)
    for r in range(args.repeats):
        # checkpoint save (what blocks the training loop) and cold load
        blocked, elapsed, path = save_once(args.dir / "ckpt", acc, scheduler, tokenizer, world, writer, step=r + 1)
        size = du(path)
        rows["save"].append(elapsed)
        rows["blocked"].append(blocked)
        evict(path)
        resident = cached_bytes(path)
        rows["load"].append(load_once(path, world, tokenizer))
        log(f"repeat {r}: save {elapsed:.2f} s ({size / 1e9:.2f} GB, loop blocked {blocked:.2f} s), load {rows['load'][-1]:.2f} s "
            f"(page cache before load: {resident if resident is not None else '?'} bytes)")
        shutil.rmtree(args.dir / "ckpt", ignore_errors=True)

        # raw disk: same number of bytes, 4 MiB blocks
        target = args.dir / "dd.bin"
        count = max(1, round(size / (4 << 20)))
        rows["dd write"].append(dd(["if=/dev/zero", f"of={target}", "bs=4M", f"count={count}", "conv=fsync"]))
        evict(target)
        resident = cached_bytes(target)
        rows["dd read"].append(dd([f"if={target}", "of=/dev/null", "bs=4M"]))
        log(f"repeat {r}: dd write {rows['dd write'][-1]:.2f} s, read {rows['dd read'][-1]:.2f} s "
            f"(page cache before read: {resident if resident is not None else '?'} bytes)")
        target.unlink()
    writer.close()
    shutil.rmtree(args.dir, ignore_errors=True)

    gb = size / 1e9
    print(f"\nstate: {params / 1e6:.1f}M params fp32 + AdamW, checkpoint {gb:.2f} GB on disk; {args.repeats} repeats")
    print(f"{'':18} {'min s':>7} {'median s':>9} {'GB/s (median)':>14}")
    for key, values in rows.items():
        lo, med = stats(values)
        print(f"{key:18} {lo:7.2f} {med:9.2f} {gb / med:14.2f}")
    save_med, load_med = stats(rows["save"])[1], stats(rows["load"])[1]
    ddw, ddr = stats(rows["dd write"])[1], stats(rows["dd read"])[1]
    blocked = stats(rows["blocked"])[1]
    print("\nratios (median):")
    print(f"  save throughput / dd write (fsync): {ddw / save_med:.2f}  (best: {stats(rows['dd write'])[0] / stats(rows['save'])[0]:.2f})")
    print(f"  load throughput / dd read (cold):   {ddr / load_med:.2f}  (best: {stats(rows['dd read'])[0] / stats(rows['load'])[0]:.2f})")
    print(f"  training loop blocked by a save: {blocked:.2f} s = {blocked / save_med:.3f} of the save "
          f"(asyncSave: true; false blocks for all of it); the first save, which allocates the staging "
          f"memory: {rows['blocked'][0]:.2f} s = {rows['blocked'][0] / rows['save'][0]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
