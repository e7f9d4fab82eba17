"""Answer generation with a trained model, using the same prompt builder as training.

The prompt takes the role markers the model was trained with: a checkpoint's from the trainer
config in its trainer_state.json, a merged model's from the ``mft_prompt.json`` that ``merge-lora``
writes beside it (``prompt_format``). Batches are left-padded so every prompt ends where generation
starts; generation stops at the tokenizer's eos.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from mft_trainer.config import DataConfig

PROMPT_FILE = "mft_prompt.json"
# The data settings that decide how a prompt is assembled. The tokenizer saved with the model
# already holds the others (markers added as special tokens, the eos token).
PROMPT_FIELDS = ("role_start", "role_end", "normalize_punctuation")


@dataclass
class Sampling:
    max_new_tokens: int = 256
    do_sample: bool = False
    top_p: float = 0.95
    temperature: float = 0.1
    num_beams: int = 1


def load(model_dir: str | Path, device: str | None = None,
         base: str | Path | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A model folder, a full checkpoint, or a LoRA checkpoint on ``base`` (default: the base named
    in its adapter_config.json), on ``device`` (the GPU when there is one, unless given)."""
    from mft_trainer.lora import is_adapter_dir, load_for_inference

    if is_adapter_dir(model_dir):
        model = load_for_inference(model_dir, base)
    elif base is not None:
        raise ValueError(f"{model_dir}: a base model is for a LoRA adapter, and this folder has no adapter_config.json")
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


def prompt_format(model_dir: str | Path, role_start: str | None = None, role_end: str | None = None) -> DataConfig:
    """The data settings the model in ``model_dir`` was trained with, as far as prompts need them:
    from its mft_prompt.json, else from the trainer config in its trainer_state.json (a checkpoint),
    else the defaults. ``role_start`` and ``role_end`` override."""
    from mft_trainer import checkpoint

    folder = Path(model_dir)
    if (folder / PROMPT_FILE).is_file():
        saved = json.loads((folder / PROMPT_FILE).read_text(encoding="utf-8"))
    elif (folder / checkpoint.STATE_FILE).is_file():
        saved = (checkpoint.load_trainer_state(folder).get("config") or {}).get("data") or {}
    else:
        saved = {}
    settings = {name: saved[name] for name in PROMPT_FIELDS if name in saved}
    overrides = {"role_start": role_start, "role_end": role_end}
    settings |= {name: value for name, value in overrides.items() if value is not None}
    return DataConfig(**settings)


def write_prompt_format(data: DataConfig, folder: str | Path) -> None:
    """Keep the prompt settings with a model written outside a checkpoint (``merge-lora``)."""
    settings = {name: getattr(data, name) for name in PROMPT_FIELDS}
    (Path(folder) / PROMPT_FILE).write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def prompt_ids(tokenizer: PreTrainedTokenizerBase, question: str, system: str | None = None,
               data_config: DataConfig | None = None) -> list[int]:
    """The prompt's token ids exactly as training tokenizes a conversation (markers apart from
    content), which tokenizing the assembled prompt string in one piece does not guarantee.
    ``data_config`` holds the role markers (see ``prompt_format``); the defaults without it."""
    from mft_trainer.data import encode_prompt

    return encode_prompt(question, tokenizer, system=system, data_config=data_config)


@torch.no_grad()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[list[int]],
             sampling: Sampling) -> list[str]:
    """Answers to prompts given as token ids (see ``prompt_ids``), batched with left padding."""
    batch = tokenizer.pad({"input_ids": prompts}, padding=True, return_tensors="pt").to(model.device)
    kwargs = {"do_sample": sampling.do_sample, "num_beams": sampling.num_beams,
              "max_new_tokens": sampling.max_new_tokens}
    if sampling.do_sample:
        kwargs.update(top_p=sampling.top_p, temperature=sampling.temperature)
    output = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    new_tokens = output[:, batch["input_ids"].shape[1]:]
    return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
