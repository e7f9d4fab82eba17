"""CPU benchmark: our training step vs a plain Hugging Face ``Trainer`` on the same GPT-NeoX, rows,
batch and steps; and useful (target) tokens/s with packing vs padding.

    .venv/bin/python bench/trainer/bench_cpu.py [--repeats 3] [--steps 8]

Every measurement runs in its own process (ATorch keeps per-process state; a fresh process also
keeps caches fair). Printed: tokens/s per run, min/median over repeats, and the ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = [str(REPO / "examples" / "data" / t) for t in ("code-exam", "code-helper", "code-text")]
MODEL = {"hidden_size": 256, "num_hidden_layers": 6, "num_attention_heads": 8, "intermediate_size": 1024,
         "max_position_embeddings": 2048, "rotary_pct": 0.25, "use_parallel_residual": True,
         "tie_word_embeddings": False}
BATCH, SEQ, WARMUP = 4, 512, 2


def trainer_config(padding_mode: str, steps: int, out: Path):
    from mft_trainer.config import from_dict

    return from_dict({
        "mode": "sst",
        "model": {"tokenizer_path": str(REPO / "trainer/mft_trainer/assets/tokenizer-tiny"), "config": MODEL},
        "data": {"paths": DATA, "padding_mode": padding_mode, "valid_split": 0.05},
        "training": {"per_device_train_batch_size": BATCH, "gradient_accumulation_steps": 1, "seq_length": SEQ,
                     "max_steps": steps + WARMUP, "epochs": 100, "checkpoint_activations": False, "bf16": False,
                     "learning_rate": 1e-4, "num_warmup_steps": 0, "weighted_loss_mode": "case1"},
        "checkpoint": {"mount_path": str(out), "resume": "never"},
    })


def ours(padding_mode: str, steps: int) -> dict:
    """Our setup (data pipeline, model, ATorch) and train_step, timed after WARMUP steps."""
    from mft_trainer.train import epoch_steps, setup, train_step

    with tempfile.TemporaryDirectory() as out:
        run = setup(trainer_config(padding_mode, steps, Path(out)))
        return timed(lambda: ((b, train_step(run, b)) for b in epoch_steps(run)), steps)


def hf(padding_mode: str, steps: int) -> dict:
    """A plain transformers Trainer fed the same rows, in the same order, through the same collate."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from mft_trainer.data import EpochSampler, build_datasets, collate, load_tokenizer

    class InOrder(Trainer):
        """Reads the dataset in its order (ours, below), not shuffled: with padding, which rows
        share a batch sets its cost."""

        def _get_train_sampler(self, *args, **kwargs):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    with tempfile.TemporaryDirectory() as out:
        config = trainer_config(padding_mode, steps, Path(out))
        tokenizer = load_tokenizer(config)
        rows = build_datasets(config, tokenizer).train
        order = EpochSampler(rows, rank=0, world_size=1, seed=config.training.seed).rank_indices()
        torch.manual_seed(0)
        model_config = GPTNeoXConfig(**MODEL, vocab_size=len(tokenizer))
        model_config._attn_implementation = "sdpa"
        model = GPTNeoXForCausalLM(model_config)
        seen = []

        def hf_collate(batch_rows):
            batch = collate(batch_rows, tokenizer.pad_token_id)
            seen.append(batch)
            # HF shifts labels itself: give it unshifted targets (input ids where a target follows).
            labels = torch.full_like(batch["input_ids"], -100)
            labels[:, 1:] = torch.where(batch["labels"][:, :-1] != -100, batch["input_ids"][:, 1:], -100)
            return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}

        clock = StepClock()
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=BATCH, max_steps=steps + WARMUP,
                                 learning_rate=1e-4, report_to=[], save_strategy="no", logging_strategy="no",
                                 use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, seed=0,
                                 remove_unused_columns=False)
        # The data loader collates one batch ahead of the step: step k trained on the k-th collated batch.
        callback = type("Clock", (TrainerCallback,), {"on_step_begin": lambda s, *a, **k: clock.begin(),
                                                     "on_step_end": lambda s, *a, **k: clock.end(seen[clock.step])})()
        InOrder(model=model, args=args, train_dataset=ListDataset([rows[int(i)] for i in order]),
                data_collator=hf_collate, callbacks=[callback]).train()
        return clock.result()


class ListDataset:
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


class StepClock:
    """Times steps after WARMUP; counts input (non-pad) and target tokens of the batch each step used."""

    def __init__(self):
        self.step, self.seconds, self.tokens, self.targets = 0, 0.0, 0, 0

    def begin(self):
        self.started = time.perf_counter()

    def end(self, batch):
        self.step += 1
        if self.step > WARMUP:
            self.seconds += time.perf_counter() - self.started
            self.tokens += int((batch["sample_index"] >= 0).sum())
            self.targets += int((batch["labels"] != -100).sum())

    def result(self):
        return {"tokens_per_second": self.tokens / self.seconds, "targets_per_second": self.targets / self.seconds}


def timed(steps_iter, steps: int) -> dict:
    import torch

    clock = StepClock()
    iterator = steps_iter()
    for _ in range(steps + WARMUP):
        clock.begin()
        batches, _ = next(iterator)
        clock.end({k: torch.cat([b[k].flatten() for b in batches]) for k in ("sample_index", "labels")})
    return clock.result()


def measure(kind: str, padding_mode: str, steps: int) -> dict:
    cmd = [sys.executable, __file__, "--one", kind, padding_mode, "--steps", str(steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                          env={"OMP_NUM_THREADS": "2", "PATH": "/usr/bin:/bin", "TOKENIZERS_PARALLELISM": "false"})
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--one", nargs=2, metavar=("KIND", "PADDING_MODE"))
    args = parser.parse_args()
    if args.one:
        kind, padding_mode = args.one
        print(json.dumps((ours if kind == "ours" else hf)(padding_mode, args.steps)))
        return
    cases = [("ours", "padding"), ("hf", "padding"), ("ours", "pack")]
    runs = {case: [] for case in cases}
    for r in range(args.repeats):
        for case in cases:  # interleaved, so machine noise hits every case alike
            runs[case].append(measure(*case, args.steps))
            print(f"repeat {r + 1} {case[0]:4s} {case[1]:7s} {json.dumps(runs[case][-1])}", flush=True)
    summary = {}
    for case, results in runs.items():
        tps = [x["tokens_per_second"] for x in results]
        useful = [x["targets_per_second"] for x in results]
        summary[case] = {"tokens_per_second_median": statistics.median(tps),
                         "targets_per_second_median": statistics.median(useful)}
        # On a shared machine the best run is the least disturbed one; min and median show the noise.
        print(f"{case[0]:4s} {case[1]:7s} tokens/s min {min(tps):8.0f} median {statistics.median(tps):8.0f} "
              f"max {max(tps):8.0f} | target tokens/s median {statistics.median(useful):8.0f} max {max(useful):8.0f}")
    ratio = summary[("ours", "padding")]["tokens_per_second_median"] / summary[("hf", "padding")]["tokens_per_second_median"]
    useful = summary[("ours", "pack")]["targets_per_second_median"] / summary[("ours", "padding")]["targets_per_second_median"]
    print(f"ours/HF Trainer tokens/s (padding, median): {ratio:.2f}")
    print(f"useful target tokens/s, pack/padding (ours, median): {useful:.2f}")


if __name__ == "__main__":
    main()
