"""Answer generation with a trained model, using the same prompt builder as training.

Batches are left-padded so every prompt ends where generation starts; generation stops at the
tokenizer's eos.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class Sampling:
    max_new_tokens: int = 256
    do_sample: bool = False
    top_p: float = 0.95
    temperature: float = 0.1
    num_beams: int = 1


def load(model_dir: str | Path, device: str | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A model folder, a full checkpoint, or a LoRA checkpoint (its base read from adapter_config.json),
    on ``device`` (the GPU when there is one, unless given)."""
    from mft_trainer.lora import is_adapter_dir, load_for_inference

    model = load_for_inference(model_dir) if is_adapter_dir(model_dir) else AutoModelForCausalLM.from_pretrained(model_dir)
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


def prompt_ids(tokenizer: PreTrainedTokenizerBase, question: str, system: str | None = None) -> list[int]:
    """The prompt's token ids exactly as training tokenizes a conversation (markers apart from
    content), which tokenizing the assembled prompt string in one piece does not guarantee."""
    from mft_trainer.data import encode_prompt

    return encode_prompt(question, tokenizer, system=system)


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
