"""GPU benchmark (one GPU, about 8 minutes at most): our ATorch step vs a Hugging Face Trainer,
GPT-NeoX ~410M and ~1.4B with random weights, bf16, packed rows of 2048 and 4096 tokens. Prints
tokens/s/GPU and MFU against 989 TFLOP/s (H100/H200 dense bf16). Run through ``bench/gpu/run.sh``.
``--smoke`` runs the same code on CPU with the tiny GPT-NeoX, fp32, a few steps (what the test suite
does, so the script stays runnable between GPU runs). ``--overhead --repeats 5`` measures, on CPU, the
host work of a step (24 layers of the tiny width), ours vs HF.

Both sides get the same synthetic rows: several documents per row, random token ids. Ours keeps the
documents apart (a varlen flash kernel over the documents; before it, a block-diagonal mask); the HF
Trainer baseline, like any plain Trainer, attends across them with sdpa's causal kernel. Activation
checkpointing is on for both; both use AdamW's fused kernel.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "trainer" / "mft_trainer" / "assets" / "models"
PEAK = 989e12
PER_RUN_SECONDS = 240  # one configuration: start-up, model build, 13 steps
DOCS_PER_ROW = 4
# tokens_per_step is per GPU: 8 rows of 2048 or 4 rows of 4096
FULL = SimpleNamespace(models=("410m", "1.4b"), seqs=(2048, 4096), tokens_per_step=16384, warmup=3, steps=10,
                       bf16=True)
SMOKE = SimpleNamespace(models=("tiny",), seqs=(128,), tokens_per_step=512, warmup=1, steps=2, bf16=False)
# On CPU: the 410M's 24 layers at the tiny width, so a step is mostly per-operation host work (Python,
# autograd, hooks), what a GPU waits on when its kernels are short. Measures that overhead, ours vs HF.
OVERHEAD = SimpleNamespace(models=("deep",), seqs=(64,), tokens_per_step=512, warmup=3, steps=15, bf16=False)
PLANS = {"smoke": SMOKE, "overhead": OVERHEAD}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def model_config(name: str) -> dict:
    if name == "deep":
        return model_config("tiny") | {"num_hidden_layers": 24}
    # The tiny config leaves the vocabulary to the tokenizer; the tiny tokenizer has 4096 tokens.
    return {"vocab_size": 4096, **json.loads((MODELS / f"gpt-neox-{name}.json").read_text())}


def random_model(name: str, attention: str):
    """The same randomly initialised GPT-NeoX for both sides: (config dict, model, parameter count).
    ``attention``: ours (sdpa, and a varlen flash kernel for packed rows) or transformers' sdpa."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    cfg = model_config(name)
    config = GPTNeoXConfig(**cfg)
    config._attn_implementation = attention
    config.use_cache = False  # as the trainer builds it: a KV cache breaks activation recomputation
    torch.manual_seed(0)
    # Initialised where it will train: on the GPU, 1.4B random weights take a moment, not ~25 s of CPU.
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = GPTNeoXForCausalLM(config)
    return cfg, model, sum(p.numel() for p in model.parameters())


def rows(seq: int, count: int, vocab: int) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(count):
        cuts = sorted(torch.randperm(seq - 1, generator=gen)[: DOCS_PER_ROW - 1].add(1).tolist())
        sizes = [b - a for a, b in zip([0, *cuts], [*cuts, seq])]
        ids = torch.randint(0, vocab, (seq,), generator=gen)
        out.append({"input_ids": ids, "labels": torch.roll(ids, -1),
                    "position_ids": torch.cat([torch.arange(s) for s in sizes]),
                    "sample_index": torch.cat([torch.full((s,), i) for i, s in enumerate(sizes)]),
                    "task_id": 0})
    return out


def batches(plan: SimpleNamespace, seq: int, vocab: int):
    per_batch = plan.tokens_per_step // seq
    data = rows(seq, per_batch * (plan.warmup + plan.steps), vocab)
    for i in range(plan.warmup + plan.steps):
        chunk = data[i * per_batch:(i + 1) * per_batch]
        yield {k: torch.stack([r[k] for r in chunk]) for k in ("input_ids", "labels", "position_ids", "sample_index")} \
            | {"task_ids": torch.zeros(per_batch, dtype=torch.long)}


def flops_per_token(cfg: dict, params: int, seq: int) -> float:
    from mft_trainer.metrics import flops_per_token as fpt

    return fpt(params, params, cfg["num_hidden_layers"], cfg["hidden_size"], seq)  # full training


def our_run(plan: SimpleNamespace, name: str, seq: int):
    """Our training run as ``train.setup`` would build it, without data: (run, config dict, parameter count)."""
    from mft_trainer import checkpoint, distributed
    from mft_trainer.accelerate import accelerate
    from mft_trainer.config import TrainerConfig, TrainingConfig
    from mft_trainer.model import ATTENTION
    from mft_trainer.schedule import build_scheduler
    from mft_trainer.train import Run

    world = distributed.init()
    cfg, model, params = random_model(name, ATTENTION)
    training = TrainingConfig(bf16=plan.bf16, checkpoint_activations=True, seq_length=seq, weighted_loss_mode="case1",
                              num_warmup_steps=0, lr_scheduler_type="constant")
    acc = accelerate(model, training, world)
    scheduler = build_scheduler(acc.optimizer, training, plan.warmup + plan.steps)
    run = Run(TrainerConfig(mode="sst", training=training), world, None, SimpleNamespace(tasks=["t"]), None,
              acc, scheduler, plan.warmup + plan.steps, params, checkpoint.Writer(background=False))
    return run, cfg, params


def ours(plan: SimpleNamespace, name: str, seq: int) -> dict:
    from mft_trainer.train import train_step

    run, cfg, params = our_run(plan, name, seq)
    seconds, tokens = 0.0, 0
    for i, batch in enumerate(batches(plan, seq, cfg["vocab_size"])):
        sync()
        start = time.perf_counter()
        train_step(run, [batch])
        sync()
        if i >= plan.warmup:
            seconds += time.perf_counter() - start
            tokens += batch["input_ids"].numel()
    return report("ours", name, seq, tokens / seconds, flops_per_token(cfg, params, seq), run.acc.strategy)


def hf(plan: SimpleNamespace, name: str, seq: int) -> dict:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    cfg, model, params = random_model(name, "sdpa")
    # With the all-ones attention mask a tokenizer returns: without one, transformers (no KV cache
    # under gradient checkpointing) builds a full mask and sdpa loses its causal kernels.
    data = [{"input_ids": b["input_ids"][i], "attention_mask": torch.ones_like(b["input_ids"][i]),
             "labels": b["input_ids"][i]}
            for b in batches(plan, seq, cfg["vocab_size"]) for i in range(len(b["input_ids"]))]
    clock = {"step": 0, "seconds": 0.0}

    class Clock(TrainerCallback):
        def on_step_begin(self, *args, **kwargs):
            sync()
            clock["start"] = time.perf_counter()

        def on_step_end(self, *args, **kwargs):
            sync()
            clock["step"] += 1
            if clock["step"] > plan.warmup:
                clock["seconds"] += time.perf_counter() - clock["start"]

    args = TrainingArguments(output_dir="/tmp/hf-bench", per_device_train_batch_size=plan.tokens_per_step // seq,
                             max_steps=plan.warmup + plan.steps, bf16=plan.bf16, gradient_checkpointing=True, report_to=[],
                             save_strategy="no", logging_strategy="no", disable_tqdm=True,
                             dataloader_num_workers=0, learning_rate=1e-4)
    Trainer(model=model, args=args, train_dataset=data, callbacks=[Clock()]).train()
    return report("hf", name, seq, plan.steps * plan.tokens_per_step / clock["seconds"], flops_per_token(cfg, params, seq), [])


def report(kind, name, seq, tps, fpt, strategy) -> dict:
    return {"trainer": kind, "model": name, "seq": seq, "tokens_per_second_per_gpu": tps,
            "mfu": fpt * tps / PEAK, "strategy": strategy}


def measure(kind: str, name: str, seq: int, plan_args: list[str], deadline: float) -> dict | None:
    """One configuration in its own process, within what is left of the budget (so one hang or
    failure costs its own time only); None, with the reason printed, when it gives no result."""
    left = deadline - time.monotonic()
    label = f"{kind} {name} seq {seq}"
    if left <= 0:
        print(f"{label}: skipped, the time budget is spent", flush=True)
        return None
    limit = min(PER_RUN_SECONDS, left)
    # One process in a session of its own (ours is a world of one: the trainer fills in the rank
    # variables), so a timeout kills all of it and frees the GPU for the next configuration.
    with subprocess.Popen([sys.executable, __file__, "--one", kind, name, str(seq), *plan_args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, cwd=REPO, start_new_session=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, stderr = proc.communicate()
            print(f"{label}: timed out after {limit:.0f} s\n{stderr[-3000:]}", flush=True)
            return None
    if proc.returncode != 0:
        print(f"{label}: failed\n{stderr[-3000:]}", flush=True)
        return None
    return json.loads([ln for ln in stdout.splitlines() if ln.startswith("{")][-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--one", nargs=3, metavar=("TRAINER", "MODEL", "SEQ"))
    parser.add_argument("--out", default="bench-gpu.jsonl")
    plans = parser.add_mutually_exclusive_group()
    plans.add_argument("--smoke", action="store_true", help="the tiny model on CPU, a few steps")
    plans.add_argument("--overhead", action="store_true",
                       help="on CPU, 24 layers of the tiny width: the host's per-operation work, ours vs HF")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of every configuration, interleaved")
    parser.add_argument("--budget", type=float, default=420,
                        help="seconds for all configurations; what is left when one starts is its limit")
    args = parser.parse_args()
    chosen = next((name for name in PLANS if getattr(args, name)), None)
    plan, plan_args = (PLANS[chosen], [f"--{chosen}"]) if chosen else (FULL, [])
    if args.one:
        kind, name, seq = args.one
        print(json.dumps((ours if kind == "ours" else hf)(plan, name, int(seq))), flush=True)
        return
    deadline = time.monotonic() + args.budget
    results = []
    for _ in range(args.repeats):
        for name in plan.models:
            for seq in plan.seqs:
                for kind in ("ours", "hf"):
                    result = measure(kind, name, seq, plan_args, deadline)
                    if result is None:
                        continue
                    results.append(result)
                    print(f"{kind:4s} {name:5s} seq {seq}: {result['tokens_per_second_per_gpu']:9.0f} tokens/s/GPU, "
                          f"MFU {result['mfu']:.1%}", flush=True)
                    with Path(args.out).open("a") as out:
                        out.write(json.dumps(result) + "\n")
    summarize(plan, results)


def summarize(plan: SimpleNamespace, results: list[dict]) -> None:
    """Per configuration: ours/HF of the median tokens/s, with min and max when repeated."""
    for name in plan.models:
        for seq in plan.seqs:
            speeds = {kind: sorted(r["tokens_per_second_per_gpu"] for r in results
                                   if (r["trainer"], r["model"], r["seq"]) == (kind, name, seq))
                      for kind in ("ours", "hf")}
            if not (speeds["ours"] and speeds["hf"]):
                continue
            ratio = statistics.median(speeds["ours"]) / statistics.median(speeds["hf"])
            spread = "" if len(speeds["ours"]) == 1 else "".join(
                f"; {kind} min/median/max {min(v):.0f}/{statistics.median(v):.0f}/{max(v):.0f}"
                for kind, v in speeds.items())
            print(f"{name} seq {seq}: ours/HF Trainer = {ratio:.2f}{spread}")


if __name__ == "__main__":
    main()
