"""Progress reporting: JSON lines on stdout (the operator's protocol), TensorBoard, a human line.

Only rank 0 reports. The JSON keys are a contract with the operator, which parses them out of the
master pod's log: ``mft.progress``, ``mft.checkpoint`` and ``mft.summary`` objects, one per line.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

HUMAN_PROGRESS_ENV = "MFT_HUMAN_PROGRESS"
TENSORBOARD_DIR = "tensorboard"  # under the output folder
# Dense bf16 peak per GPU, for MFU. Unknown devices report no MFU rather than a wrong one.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12}


def peak_flops(bf16: bool) -> float | None:
    """The device's dense bf16 peak, for MFU of bf16 training (no MFU for fp32, whose peak depends
    on whether matmuls use TF32)."""
    if not (bf16 and torch.cuda.is_available()):
        return None
    name = torch.cuda.get_device_name()
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


def flops_per_token(num_params: int, num_trainable: int, num_layers: int, hidden: int, seq_length: int) -> float:
    """Training FLOPs per token: 2N forward and 2N for the activation gradients through every
    weight, 2N for the weight gradients of the trainable ones only (6N in full training, about 4N
    with LoRA), plus the attention score/value matmuls."""
    return 4 * num_params + 2 * num_trainable + 12 * num_layers * hidden * seq_length


class Throughput:
    """Tokens and step time since the last report; gives tokens/s and MFU from the steps' own time
    (batching included), and the ETA from the wall time since the last report, so that it counts
    the evaluations and saves to come as well."""

    def __init__(self, flops_per_token: float | None, peak: float | None, world_size: int,
                 clock: Callable[[], float] = time.perf_counter):
        self.flops_per_token, self.peak, self.world_size = flops_per_token, peak, world_size
        self.clock = clock
        self.tokens = 0.0
        self.seconds = 0.0
        self.steps = 0
        self.window_started = clock()
        # A report with no step since the previous one (e.g. right after an evaluation) repeats the
        # last rates rather than claiming zero throughput.
        self.last: dict[str, float | None] = {"tokens_per_second": None, "mfu": None, "eta_seconds": None}

    def add(self, tokens: float, seconds: float) -> None:
        self.tokens += tokens
        self.seconds += seconds
        self.steps += 1

    def report(self, remaining_steps: int) -> dict[str, float | None]:
        if not self.steps:
            return dict(self.last)
        tps = self.tokens / self.seconds if self.seconds > 0 else 0.0
        mfu = None
        if self.peak and self.flops_per_token:
            mfu = self.flops_per_token * tps / (self.peak * self.world_size)
        now = self.clock()
        eta = remaining_steps * (now - self.window_started) / self.steps
        self.tokens, self.seconds, self.steps, self.window_started = 0.0, 0.0, 0, now
        self.last = {"tokens_per_second": tps, "mfu": mfu, "eta_seconds": eta}
        return dict(self.last)


class Reporter:
    def __init__(self, output_dir: Path, enabled: bool, total_steps: int):
        self.enabled, self.total_steps = enabled, total_steps
        # `mftctl run --local` draws its own progress bar from the JSON lines and turns these off.
        self.human = os.environ.get(HUMAN_PROGRESS_ENV, "on") != "off"
        self.writer = None
        self.bar = None
        self._lock = threading.Lock()
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(output_dir / TENSORBOARD_DIR))
        if self.human and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, file=sys.stderr, dynamic_ncols=True, desc="train")

    def progress(self, *, step: int, epoch: float, loss: float, valid_loss: float | None, lr: float,
                 throughput: dict[str, float | None]) -> None:
        if not self.enabled:
            return
        self._emit({"kind": "mft.progress", "step": step, "total_steps": self.total_steps, "epoch": epoch,
                    "loss": loss, "valid_loss": valid_loss, "lr": lr,
                    "tokens_per_second": throughput.get("tokens_per_second"),
                    "mfu": throughput.get("mfu"), "eta_seconds": throughput.get("eta_seconds"),
                    "time": time.time()})
        self._human(step, epoch, loss, valid_loss, lr, throughput)

    def checkpoint(self, *, name: str, latest: str | None, best: str | None, best_valid_loss: float | None) -> None:
        if self.enabled:
            self._emit({"kind": "mft.checkpoint", "name": name, "latest": latest, "best": best,
                        "best_valid_loss": best_valid_loss})

    def summary(self, **fields: Any) -> None:
        if self.enabled:
            self._emit({"kind": "mft.summary", **fields, "time": time.time()})

    def scalars(self, step: int, values: dict[str, float | None]) -> None:
        if self.enabled:
            self._scalars(step, values)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()

    def _emit(self, obj: dict[str, Any]) -> None:
        # One write per line under a lock: checkpoint events come from the writer thread, and the
        # operator parses these lines.
        with self._lock:
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()

    def _scalars(self, step: int, values: dict[str, float | None]) -> None:
        for tag, value in values.items():
            if value is not None:
                self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def _human(self, step, epoch, loss, valid_loss, lr, throughput) -> None:
        parts = [f"epoch {epoch:.2f}"]
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        if valid_loss is not None:
            parts.append(f"valid {valid_loss:.4f}")
        parts += [f"lr {lr:.2e}", f"{throughput.get('tokens_per_second') or 0:.0f} tok/s"]
        if throughput.get("mfu") is not None:
            parts.append(f"mfu {throughput['mfu']:.1%}")
        if throughput.get("eta_seconds") is not None:
            parts.append(f"eta {_duration(throughput['eta_seconds'])}")
        if not self.human:
            return
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix_str(" | ".join(parts))
        else:
            print(f"step {step}/{self.total_steps} | " + " | ".join(parts), file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
