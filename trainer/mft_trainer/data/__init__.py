"""The trainer's data pipeline: MFTCoder JSONL records -> token ids and exact loss masks -> packed rows
-> multi-task, distributed, resumable batches.

`data.paths` lists task folders, one task each, named by the folder's last path component. With
`data.format: jsonl` (default) a folder holds *.jsonl / *.jsonl.gz files, tokenized when training starts.
With `data.format: bin` each path is a folder written by `mft-train preprocess --output DIR` (DIR/{task}),
memory-mapped at start; it must have been made with the training tokenizer, mode and role markers.

The modules, in the order data flows through them: tasks (folders), records (JSONL lines), assembly
(turns -> segments, prompt), encoding (segments -> ids and masks, on all cores), documents (per-task
arrays, over-long policy, split), binary (preprocessed datasets), packing (which documents share a row),
rows (RowDataset), sampler (EpochSampler), collate (batches), builder (build_datasets), report (counts).
"""

from mft_trainer.data.assembly import build_prompt
from mft_trainer.data.builder import Datasets, build_datasets
from mft_trainer.data.collate import collate
from mft_trainer.data.encoding import encode_prompt
from mft_trainer.data.errors import DataError
from mft_trainer.data.report import DataReport
from mft_trainer.data.rows import IGNORE, Row, RowDataset
from mft_trainer.data.sampler import EpochSampler, validation_order
from mft_trainer.data.tokenizer import TINY_TOKENIZER_DIR, load_tokenizer, tokenizer_fingerprint

__all__ = [
    "IGNORE",
    "TINY_TOKENIZER_DIR",
    "DataError",
    "DataReport",
    "Datasets",
    "EpochSampler",
    "Row",
    "RowDataset",
    "build_datasets",
    "build_prompt",
    "collate",
    "encode_prompt",
    "load_tokenizer",
    "tokenizer_fingerprint",
    "validation_order",
]
