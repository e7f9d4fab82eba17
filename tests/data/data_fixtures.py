"""Helpers for the data pipeline tests (a unique module name: tests/data is on sys.path)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from mft_trainer.config import DataConfig, ModelConfig, TrainerConfig, TrainingConfig
from mft_trainer.data.assembly import AssemblyStyle
from mft_trainer.data.encoding import Encoder, encode_chunk
from mft_trainer.data.records import LineChunk
from tokenizer_fixtures import gpt_neox_20b_dir, tiny_tokenizer_dir

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "data"
TOKENIZER_DIRS = {"tiny": tiny_tokenizer_dir, "neox": gpt_neox_20b_dir}
EOS = object()  # stands for the tokenizer's eos token in expected pieces
_encoders: dict[tuple, tuple[object, Encoder]] = {}  # built once per tokenizer and settings


def make_config(
    tokenizer_dir: Path, paths: list = (), mode: str = "sft", seq_length: int = 64, seed: int = 42, **data: Any
) -> TrainerConfig:
    return TrainerConfig(
        mode=mode,
        model=ModelConfig(tokenizer_path=str(tokenizer_dir)),
        data=DataConfig(paths=[str(p) for p in paths], **data),
        training=TrainingConfig(seq_length=seq_length, seed=seed),
    )


def write_jsonl(path: Path, records: list[Any]) -> Path:
    """One line per record: dicts are JSON-encoded, str/bytes written as they are (for broken lines)."""
    lines = [
        r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)).encode()
        for r in records
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    data = b"".join(line + b"\n" for line in lines)
    path.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)
    return path


def chat(*turns: tuple[str, str]) -> dict:
    return {"chat_rounds": [{"role": role, "content": content} for role, content in turns]}


def tokenize(tokenizer, records, mode="sft", **data):
    """Through the code path of `mft-train tokenize`: (text, ids, mask) per record."""
    key = (id(tokenizer), mode, tuple(sorted(data.items())))
    if key not in _encoders:  # the tokenizer is kept too, so that its id is never reused
        _encoders[key] = (tokenizer, Encoder(tokenizer, AssemblyStyle.from_config(DataConfig(**data), mode)))
    encoder = _encoders[key][1]
    lines = [json.dumps(r).encode() for r in records]
    chunk = encode_chunk(encoder, LineChunk("t.jsonl", 0, 1, lines), "fail", keep_text=True)
    bounds = [0, *chunk.lengths.cumsum()]
    return [
        (text, chunk.tokens[a:b].tolist(), chunk.loss_mask[a:b].tolist())
        for text, a, b in zip(chunk.texts, bounds, bounds[1:])
    ]


def expected(tokenizer, pieces):
    ids, mask = [], []
    for piece, flag in pieces:
        piece_ids = (
            [tokenizer.eos_token_id]
            if piece is EOS
            else tokenizer.encode(piece, add_special_tokens=False, split_special_tokens=True)
        )
        ids += piece_ids
        mask += [flag] * len(piece_ids)
    text = "".join(tokenizer.eos_token if piece is EOS else piece for piece, _ in pieces)
    return text, ids, mask
