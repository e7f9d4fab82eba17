"""Loading the tokenizer the way every part of the trainer sees it, its chat template, and its fingerprint."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tokenizers import Tokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from mft_trainer.config import DataConfig, TrainerConfig
from mft_trainer.data.assembly import PUNCTUATION, AssemblyStyle
from mft_trainer.data.errors import DataError
from mft_trainer.data.records import ROLES

# A 4096-token byte-level BPE shaped like GPT-NeoX-20B's, for the demo and tests (see make_tokenizer.py).
TINY_TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "assets" / "tokenizer-tiny"


def load_tokenizer(config: TrainerConfig) -> PreTrainedTokenizerFast:
    """The fast tokenizer at model.tokenizer_path (or model.path), adjusted by the data section:

    - `data.markers_as_special_tokens` adds role_start/role_end as special tokens (each becomes one id;
      this grows the vocabulary, so the model's embeddings must be resized to len(tokenizer)). The
      default keeps them plain text, like the reference.
    - `data.eos_token` replaces the eos token; it must already be a single token of the vocabulary.
    - a missing pad token is set to eos: padding is masked out everywhere, only its id must exist.
    - the chat template renders conversations as training assembles them (``chat_template``), so that
      the checkpoints, which save this tokenizer, carry it for serving.
    """
    path = config.tokenizer_path
    if not path:
        raise DataError("model.tokenizer_path: expected a tokenizer folder (or model.path), found none")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: expected a Hugging Face tokenizer folder, cannot load it: {exc}") from exc
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise DataError(f"{path}: expected a fast tokenizer (tokenizer.json), found {type(tokenizer).__name__}")
    data = config.data
    if data.markers_as_special_tokens:
        tokenizer.add_special_tokens(
            {"additional_special_tokens": [data.role_start, data.role_end]}, replace_additional_special_tokens=False
        )
    if data.eos_token:
        if data.eos_token not in tokenizer.get_vocab():
            raise DataError(f"data.eos_token: expected a token of the tokenizer at {path}, found {data.eos_token!r}")
        tokenizer.eos_token = data.eos_token
    if tokenizer.eos_token is None:
        raise DataError(f"{path}: the tokenizer has no eos token; set data.eos_token")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.chat_template = chat_template(data, tokenizer.eos_token)
    return tokenizer


def chat_template(data: DataConfig, eos_token: str) -> str:
    """A Jinja chat template (``apply_chat_template``) that renders messages as training assembles a
    conversation: each turn its role marker then its content, eos after each bot turn, no separators;
    ``add_generation_prompt`` appends the bot marker. Roles as in chat_rounds: system, human or user,
    bot or assistant. Markers and eos are literals, so serving stacks that pass no special tokens to
    the template render it alike.

    The rendered text is what training sees, but a tokenizer given it in one piece may merge across a
    turn boundary (``.<``) where training tokenized markers apart from content, unless the markers are
    special tokens (``data.markers_as_special_tokens``)."""
    style = AssemblyStyle.from_config(data, "sft")
    markers = {role: style.marker(role) for role in ("system", "human", "bot")}
    return (
        "{%- set markers = " + _literal(markers) + " -%}\n"
        "{%- set roles = " + _literal(ROLES) + " -%}\n"
        "{%- for message in messages -%}\n"
        "{%- if message['role'] not in roles -%}\n"
        "{{ raise_exception('expected the role system, human or bot (or user, assistant), found ' ~ message['role']) }}\n"
        "{%- endif -%}\n"
        "{%- set role = roles[message['role']] -%}\n"
        + _content(style) +
        "{{ markers[role] ~ content }}\n"
        "{%- if role == 'bot' -%}{{ " + _literal(eos_token) + " }}{%- endif -%}\n"
        "{%- endfor -%}\n"
        "{%- if add_generation_prompt -%}{{ markers['bot'] }}{%- endif -%}\n"
    )


def _content(style: AssemblyStyle) -> str:
    """The statements that set ``content``: the message's, with full-width punctuation converted when
    training converts it (``data.normalize_punctuation``)."""
    if not style.normalize_punctuation:
        return "{%- set content = message['content'] -%}\n"
    pairs = [[chr(code), target if isinstance(target, str) else chr(target)] for code, target in PUNCTUATION.items()]
    return (
        "{%- set text = namespace(value=message['content']) -%}\n"
        "{%- for pair in " + _literal(pairs) + " -%}{%- set text.value = text.value | replace(pair[0], pair[1]) -%}"
        "{%- endfor -%}\n"
        "{%- set content = text.value -%}\n"
    )


def _literal(value: str | dict | list) -> str:
    """``value`` as a Jinja literal. JSON strings are Jinja strings: Jinja reads their escapes as Python
    does; non-ASCII characters stay as they are, since Jinja would read JSON's surrogate pairs apart."""
    return json.dumps(value, ensure_ascii=False)


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, folder: str | Path) -> None:
    """Save it with its chat template in tokenizer_config.json, where every reader of chat templates
    looks: by default transformers 4.56 writes chat_template.jinja, which older releases and some
    servers do not read."""
    tokenizer.save_pretrained(folder, save_jinja_files=False)


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerFast) -> str:
    """sha256 of the tokenizer's serialized JSON (vocabulary, merges, normalizer, added tokens ...), taken
    with truncation and padding off: they do not change token ids."""
    backend = tokenizer.backend_tokenizer
    if backend.truncation or backend.padding:
        backend = Tokenizer.from_str(backend.to_str())
        backend.no_truncation()
        backend.no_padding()
    return "sha256:" + hashlib.sha256(backend.to_str().encode("utf-8")).hexdigest()
