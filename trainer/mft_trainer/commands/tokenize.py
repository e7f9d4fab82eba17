"""`mft-train tokenize`: one JSON object per record of a JSONL file, before packing or padding:
{"text": assembled string, "input_ids": [...], "loss_mask": [...]}, loss_mask[i] being the mask of
input_ids[i] (before the shift). The same code path as training; the counts go to stderr."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from mft_trainer.config import ConfigError
from mft_trainer.data.assembly import AssemblyStyle
from mft_trainer.data.command_line import add_config_arguments, chosen_seq_length, config_from_arguments
from mft_trainer.data.documents import apply_and_count_overlong_policy, chunk_documents, tally
from mft_trainer.data.encoding import EncodedChunk, Encoder, default_workers, encode_files
from mft_trainer.data.errors import DataError
from mft_trainer.data.report import DataReport, FileCounts, TaskCounts
from mft_trainer.data.tokenizer import load_tokenizer
from transformers import PreTrainedTokenizerFast


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="a .jsonl or .jsonl.gz file")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_arguments(args)
        tokenizer = load_tokenizer(config)
        seq_length = chosen_seq_length(args, config)
        encoder = Encoder(tokenizer, AssemblyStyle.from_config(config.data, config.mode))
        path = Path(args.input)
        if not path.is_file():
            raise DataError(f"{path}: expected a .jsonl or .jsonl.gz file, found {'a folder' if path.exists() else 'nothing'}")
        counts = FileCounts(str(path))
        chunks = encode_files([path], encoder, config.data.on_bad_record, default_workers([path]), keep_text=True)
        for chunk in tally(chunks, [counts]):
            _print_documents(chunk, seq_length, config.data.overlong_policy, counts, tokenizer)
    except (DataError, ConfigError) as exc:
        print(f"mft-train tokenize: {exc}", file=sys.stderr)
        return 1
    print(DataReport([TaskCounts(path.name, [counts])]).summary(), file=sys.stderr)
    return 0


def _print_documents(chunk: EncodedChunk, seq_length: int | None, policy: str, counts: FileCounts,
                     tokenizer: PreTrainedTokenizerFast) -> None:
    """The documents training would keep, as it would cut them (with a seq_length): the text of a
    truncated one is that of its kept tokens, so that it shows what training sees."""
    documents = chunk_documents(counts.path, chunk, counts)
    lengths, kept = documents.lengths, np.ones(len(documents), dtype=bool)
    if seq_length:
        lengths, kept = apply_and_count_overlong_policy(documents, seq_length, policy)
    for d in np.flatnonzero(kept):
        start, end = int(documents.offsets[d]), int(documents.offsets[d] + lengths[d])
        input_ids = chunk.tokens[start:end].tolist()
        truncated = lengths[d] < documents.lengths[d]
        record = {
            "text": tokenizer.decode(input_ids, clean_up_tokenization_spaces=False) if truncated else chunk.texts[d],
            "input_ids": input_ids,
            "loss_mask": chunk.loss_mask[start:end].tolist(),
        }
        sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
