"""Data pipeline benchmark: three measurements, each side by side in one run.

1. Tokenize + pack throughput (tokens/s) on a generated multi-task JSONL set (>= 100 MB): ours
   (`build_datasets`: batched fast tokenizer on all cores, vectorised packing) against the usual
   single-process way (the fast tokenizer's batched call, as `datasets.map(batched=True)` makes it)
   and a naive loop that calls the tokenizer once per turn of each record, as the reference does;
   both peers pack in Python. Runs interleaved.
2. Packing efficiency: the fraction of non-pad tokens with `padding` (static to seq_length, as the
   reference pads, and dynamic per batch) against `pack`.
3. Load time and resident memory of a binary dataset of ~10 MB and ~1 GB, each in a fresh process.

    .venv/bin/python bench/data/bench_data.py [--size-mb 100] [--repeats 3]

The JSONL set is built from the Python standard library's sources (real code, varied vocabulary) into
.bench/data/, and reused by later runs. Tokenizer: GPT-NeoX-20B's (see tests/tokenizer_fixtures.py).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
WORK = REPO / ".bench" / "data"
sys.path.insert(0, str(REPO / "tests"))

from mft_trainer.config import DataConfig, ModelConfig, TrainerConfig, TrainingConfig  # noqa: E402
from mft_trainer.data import EpochSampler, RowDataset, build_datasets, load_tokenizer  # noqa: E402
from mft_trainer.data.binary import LOSS_MASK, OFFSETS, TOKENS, preprocess  # noqa: E402
from mft_trainer.data.builder import load_documents, make_rows  # noqa: E402
from mft_trainer.data.documents import apply_overlong_policy  # noqa: E402
from mft_trainer.data.rows import DocumentView  # noqa: E402
from mft_trainer.data.tasks import MANIFEST, discover_jsonl_tasks  # noqa: E402
from tokenizer_fixtures import gpt_neox_20b_dir  # noqa: E402

SEQ_LENGTH = 4096
BATCH_SIZE = 8
TASKS = ("code-chat", "code-qa", "code-text")
QUESTIONS = [
    "Explain what the function `{name}` does and show its code.",
    "Write a Python function named `{name}` like the one in the standard library.",
    "How is `{name}` implemented? Please show the code.",
]


def config_for(paths: list[Path], padding_mode: str = "pack", data_format: str = "jsonl") -> TrainerConfig:
    return TrainerConfig(
        mode="sft",
        model=ModelConfig(tokenizer_path=str(gpt_neox_20b_dir())),
        data=DataConfig(paths=[str(p) for p in paths], format=data_format, padding_mode=padding_mode),
        training=TrainingConfig(seq_length=SEQ_LENGTH),
    )


# ---------------------------------------------------------------- data set generation


def source_blocks() -> list[tuple[str, str]]:
    """(name, source) of every top-level function in the standard library, in a fixed order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    blocks = []
    for path in sorted(stdlib.rglob("*.py")):
        if "test" in path.parts or "site-packages" in path.parts:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for piece in text.split("\ndef ")[1:]:
            body = "def " + piece.split("\n\n\n")[0]
            if 200 <= len(body) <= 6000:
                blocks.append((body[4:].split("(")[0], body))
    return blocks


def records(task: str, blocks: list[tuple[str, str]], rng: random.Random) -> Iterator[dict]:
    while True:
        name, code = rng.choice(blocks)
        if task == "code-chat":
            rounds = (
                [{"role": "system", "content": "You are a helpful Python assistant."}] if rng.random() < 0.5 else []
            )
            rounds += [
                {"role": "human", "content": rng.choice(QUESTIONS).format(name=name)},
                {"role": "bot", "content": f"```python\n{code}\n```"},
            ]
            yield {"chat_rounds": rounds}
        elif task == "code-qa":
            yield {
                "prompt": f"What does this code do?\n```python\n{code}\n```",
                "answer": f"It defines `{name}`. " + code[:300],
            }
        else:
            yield {"text": "\n\n".join(rng.choice(blocks)[1] for _ in range(rng.randint(1, 4)))}


def generated_jsonl(size_mb: int) -> list[Path]:
    """Task folders holding about size_mb MB of JSONL together, in files of ~16 MB; built once."""
    root = WORK / f"jsonl-{size_mb}mb"
    folders = [root / task for task in TASKS]
    if (root / "complete").exists():
        return folders
    shutil.rmtree(root, ignore_errors=True)
    blocks = source_blocks()
    rng = random.Random(0)
    per_task = size_mb * 1_000_000 // len(TASKS)
    for task, folder in zip(TASKS, folders):
        folder.mkdir(parents=True)
        written, part = 0, 0
        stream = records(task, blocks, rng)
        while written < per_task:
            with open(folder / f"part-{part:03d}.jsonl", "w", encoding="utf-8") as out:
                for record in stream:
                    line = json.dumps(record, ensure_ascii=False) + "\n"
                    out.write(line)
                    written += len(line.encode())
                    if written >= per_task or out.tell() > 16_000_000:
                        break
            part += 1
    (root / "complete").touch()
    return folders


# ---------------------------------------------------------------- 1. throughput


def ours(folders: list[Path], tokenizer) -> int:
    datasets = build_datasets(config_for(folders), tokenizer)
    return int(datasets.train.row_lengths().sum() + datasets.valid.row_lengths().sum())


def naive(folders: list[Path], tokenizer) -> int:
    """The reference's way: one tokenizer call per turn, Python lists, greedy packing in a Python loop."""
    encode = lambda texts: [tokenizer.encode(text, add_special_tokens=False) for text in texts]  # noqa: E731
    return _pack_in_python(folders, tokenizer, encode, records_per_call=1)


def batched(folders: list[Path], tokenizer) -> int:
    """The usual single-process way: the fast tokenizer's batched call over 1,000 records at a time
    (what ``datasets.map(batched=True)`` does), then the same Python assembly and packing."""
    encode = lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]  # noqa: E731
    return _pack_in_python(folders, tokenizer, encode, records_per_call=1000)


def _pack_in_python(folders: list[Path], tokenizer, encode: Callable[[list[str]], list[list[int]]],
                    records_per_call: int) -> int:
    markers = {
        r: tokenizer.encode(f"<|role_start|>{r}<|role_end|>", add_special_tokens=False)
        for r in ("system", "human", "bot")
    }
    rows, buffer = [], []
    for task in discover_jsonl_tasks([str(f) for f in folders]):
        for path in task.files:
            with open(path, encoding="utf-8") as lines:
                for chunk in iter(lambda: list(itertools.islice(lines, records_per_call)), []):
                    turns = [_turns(json.loads(line)) for line in chunk]
                    contents = iter(encode([content for record in turns for _, content in record]))
                    for record in turns:
                        ids = _assemble(record, contents, markers, tokenizer.eos_token_id)
                        if len(buffer) + len(ids) > SEQ_LENGTH:
                            rows.append(buffer)
                            buffer = []
                        buffer += ids[:SEQ_LENGTH]
    rows.append(buffer)
    return sum(len(r) for r in rows)


def _turns(record: dict) -> list[tuple[str, str]]:
    if "text" in record:
        return [("text", record["text"])]
    turns = record.get("chat_rounds") or [
        {"role": "human", "content": record["prompt"]},
        {"role": "bot", "content": record["answer"]},
    ]
    return [(turn["role"], turn["content"]) for turn in turns]


def _assemble(turns: list[tuple[str, str]], contents: Iterator[list[int]], markers: dict, eos: int) -> list[int]:
    """A record's ids (its loss mask is built alike and left out: both peers skip it the same way)."""
    if turns[0][0] == "text":
        return next(contents) + [eos]
    ids = []
    for role, _ in turns:
        ids += markers[role] + next(contents) + ([eos] if role == "bot" else [])
    return ids


PEERS = {"ours": ours, "batched": batched, "naive": naive}


def throughput(folders: list[Path], tokenizer, repeats: int) -> dict:
    """Every peer once per repeat, interleaved, so that a change of the machine's load hits all alike."""
    seconds: dict[str, list[float]] = {name: [] for name in PEERS}
    tokens: dict[str, int] = {}
    for _ in range(repeats):
        for name, peer in PEERS.items():
            start = time.perf_counter()
            tokens[name] = peer(folders, tokenizer)
            seconds[name].append(time.perf_counter() - start)
    return {"tokens": tokens, "seconds": seconds}


# ---------------------------------------------------------------- 2. packing efficiency


def efficiency(folders: list[Path], tokenizer) -> dict:
    """Non-pad fractions of the same documents (all of them, truncated to seq_length) in both modes."""
    documents = load_documents(config_for(folders), tokenizer)
    result = {}
    for padding_mode in ("padding", "pack"):
        parts = []
        for task in documents:
            lengths, _ = apply_overlong_policy(task.lengths, SEQ_LENGTH, "truncate")
            parts.append(make_rows(DocumentView(task, np.arange(len(task)), lengths), padding_mode, SEQ_LENGTH))
        rows = RowDataset(parts)
        lengths = rows.row_lengths()
        order = np.fromiter(EpochSampler(rows, 0, 1, seed=0), dtype=np.int64)
        batches = lengths[order[: len(order) // BATCH_SIZE * BATCH_SIZE]].reshape(-1, BATCH_SIZE)
        result[padding_mode] = {
            "rows": len(lengths),
            "static": float(lengths.sum() / (len(lengths) * SEQ_LENGTH)),
            "dynamic": float(batches.sum() / (batches.max(axis=1).sum() * BATCH_SIZE)),
        }
    return result


# ---------------------------------------------------------------- 3. load time and memory


def scaled_copy(source: Path, target: Path, token_budget: int) -> int:
    """A valid binary task folder of about token_budget tokens: a prefix of source's documents, or
    source's documents repeated. Returns the bytes on disk."""
    manifest = json.loads((source / MANIFEST).read_text())
    offsets = np.fromfile(source / OFFSETS, dtype=np.int64)
    dtype = np.dtype(manifest["token_dtype"])
    target.mkdir(parents=True)
    if token_budget < offsets[-1]:
        documents = int(np.searchsorted(offsets, token_budget))
        tokens, repeats = int(offsets[documents]), 1
        for name, itemsize in ((TOKENS, dtype.itemsize), (LOSS_MASK, 1)):
            with open(source / name, "rb") as src, open(target / name, "wb") as dst:
                dst.write(src.read(tokens * itemsize))
    else:
        documents, tokens = len(offsets) - 1, int(offsets[-1])
        repeats = -(-token_budget // tokens)
        for name in (TOKENS, LOSS_MASK):
            data = (source / name).read_bytes()
            with open(target / name, "wb") as dst:
                for _ in range(repeats):
                    dst.write(data)
    lengths = np.tile(np.diff(offsets[: documents + 1]), repeats)
    np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64).tofile(target / OFFSETS)
    manifest |= {
        "documents": int(len(lengths)),
        "tokens": int(lengths.sum()),
        "files": [{"path": "scaled", "records": int(len(lengths))}],
    }
    (target / MANIFEST).write_text(json.dumps(manifest))
    return sum(p.stat().st_size for p in target.iterdir())


LOAD_PROBE = """
import ctypes, json, sys, time
from mft_trainer.data import build_datasets, load_tokenizer
sys.path.insert(0, {bench!r})
from bench_data import config_for

def resident_mb():  # anonymous (the process's own) and file-backed (page cache mapped in) memory
    fields = dict(line.split(":") for line in open("/proc/self/status") if line.startswith(("RssAnon", "RssFile")))
    return {{name: int(value.split()[0]) / 1024 for name, value in fields.items()}}

config = config_for([{folder!r}], data_format="bin")
tokenizer = load_tokenizer(config)
ctypes.CDLL("libc.so.6").malloc_trim(0)
before = resident_mb()
start = time.perf_counter()
datasets = build_datasets(config, tokenizer)
load_s = time.perf_counter() - start
ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap back to the system: what is left is held
loaded = resident_mb()
for i in range(0, len(datasets.train), max(1, len(datasets.train) // 20)):
    datasets.train[i]
read = resident_mb()
print(json.dumps({{"load_s": load_s, "rows": len(datasets.train), "documents": datasets.report.total("records"),
                  "anon_mb": loaded["RssAnon"] - before["RssAnon"], "file_mb": loaded["RssFile"] - before["RssFile"],
                  "file_after_rows_mb": read["RssFile"] - before["RssFile"]}}))
"""


def load_cost(folder: Path, repeats: int) -> dict:
    runs = []
    for _ in range(repeats):
        probe = LOAD_PROBE.format(bench=str(Path(__file__).parent), folder=str(folder))
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"load probe failed:\n{done.stderr}")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    medians = {key: statistics.median(r[key] for r in runs) for key in ("anon_mb", "file_mb", "file_after_rows_mb")}
    return medians | {"load_s": [r["load_s"] for r in runs], "rows": runs[0]["rows"], "documents": runs[0]["documents"]}


def load_costs(folders: list[Path], tokenizer, repeats: int) -> dict:
    """Preprocess one task (timed), then load scaled copies of it."""
    binary = WORK / "bin-source"
    shutil.rmtree(binary, ignore_errors=True)
    start = time.perf_counter()
    workers = len(os.sched_getaffinity(0))
    report = preprocess(config_for(folders), tokenizer, [str(folders[0])], binary, SEQ_LENGTH, workers)
    print(
        f"   (preprocess of {folders[0].name}: {report.total('records')} records in {time.perf_counter() - start:.1f} s)"
    )
    result = {}
    for label, budget in (("10MB", 10_000_000 // 3), ("1GB", 1_000_000_000 // 3)):  # 3 bytes a token on disk
        target = WORK / f"bin-{label}" / TASKS[0]
        shutil.rmtree(target.parent, ignore_errors=True)
        size = scaled_copy(binary / TASKS[0], target, budget)
        result[label] = {"bytes": size, **load_cost(target, repeats)}
        shutil.rmtree(target.parent)
    return result


# ---------------------------------------------------------------- report


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import tokenizers
    import transformers

    return (
        f"{len(os.sched_getaffinity(0))} cores ({cpu}), {memory:.0f} GiB RAM, Python {platform.python_version()}, "
        f"tokenizers {tokenizers.__version__}, transformers {transformers.__version__}, numpy {np.__version__}"
    )


def report_throughput(folders: list[Path], tokenizer, repeats: int) -> None:
    speed = throughput(folders, tokenizer, repeats)
    print(f"\n1. tokenize+pack, {speed['tokens']['ours']:,} tokens, {repeats} runs each, interleaved "
          f"(seconds: min / median)")
    median = {name: statistics.median(s) for name, s in speed["seconds"].items()}
    for name, seconds in speed["seconds"].items():
        print(f"   {name:7s}: {min(seconds):7.1f} / {median[name]:7.1f}   "
              f"{speed['tokens'][name] / median[name]:12,.0f} tokens/s")
    for peer in ("batched", "naive"):
        print(f"   ratio ours/{peer}: {median[peer] / median['ours']:.2f}x (median), "
              f"{min(speed['seconds'][peer]) / min(speed['seconds']['ours']):.2f}x (best)")


def report_efficiency(folders: list[Path], tokenizer) -> None:
    packing = efficiency(folders, tokenizer)
    print(
        f"\n2. non-pad fraction at seq_length {SEQ_LENGTH} (dynamic: batches of {BATCH_SIZE} padded to their longest row)"
    )
    for mode, numbers in packing.items():
        print(
            f"   {mode:8s}: {numbers['rows']:7d} rows, static {numbers['static']:.3f}, dynamic {numbers['dynamic']:.3f}"
        )


def report_loads(folders: list[Path], tokenizer, repeats: int) -> None:
    print(
        f"\n3. binary dataset load (build_datasets, pack, fresh process; {repeats} runs: time min / median, memory median)"
    )
    loads = load_costs(folders, tokenizer, repeats)
    for label, n in loads.items():
        print(
            f"   {label:5s}: {n['bytes'] / 1e6:7.1f} MB on disk, {n['documents']:8d} documents, {n['rows']:6d} rows; "
            f"load {min(n['load_s']):.3f} / {statistics.median(n['load_s']):.3f} s; "
            f"resident growth: own {n['anon_mb']:.1f} MB, mapped file {n['file_mb']:.1f} MB "
            f"({n['file_after_rows_mb']:.1f} MB after reading 20 rows)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parts", default="123", help="which measurements to run (default: all three)")
    args = parser.parse_args()
    folders = generated_jsonl(args.size_mb)
    size = sum(p.stat().st_size for f in folders for p in f.iterdir())
    tokenizer = load_tokenizer(config_for(folders))
    print(f"machine: {machine()}")
    print(f"data: {size / 1e6:.0f} MB JSONL in {len(folders)} tasks; tokenizer GPT-NeoX-20B; seq_length {SEQ_LENGTH}")

    if "1" in args.parts:
        report_throughput(folders, tokenizer, args.repeats)
    if "2" in args.parts:
        report_efficiency(folders, tokenizer)
    if "3" in args.parts:
        report_loads(folders, tokenizer, args.repeats)


if __name__ == "__main__":
    main()
