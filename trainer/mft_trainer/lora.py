"""LoRA through peft. Applied before ``auto_accelerate`` so ATorch wraps the peft model."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from safetensors.torch import save_file
from transformers import PreTrainedModel

from mft_trainer.config import LoraConfig

log = logging.getLogger(__name__)


def apply_lora(model: PreTrainedModel, lora: LoraConfig, adapter: str | Path | None = None) -> PeftModel:
    """Wrap ``model`` with fresh LoRA layers, or with the trainable ``adapter`` saved in a checkpoint."""
    if adapter is not None:
        peft_model = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
    else:
        peft_config = PeftLoraConfig(task_type="CAUSAL_LM", r=lora.r, lora_alpha=lora.alpha,
                                     lora_dropout=lora.dropout, target_modules=list(lora.target_modules))
        peft_model = get_peft_model(model, peft_config)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    log.info("LoRA r=%d alpha=%d on %s: %d of %d parameters trainable", lora.r, lora.alpha,
             ",".join(lora.target_modules), trainable, total)
    return peft_model


def save_adapter(model: PeftModel, state_dict: dict[str, torch.Tensor] | None, folder: Path) -> None:
    """Write the adapter as peft does (adapter_config.json, adapter_model.safetensors).

    Not ``PeftModel.save_pretrained``: peft picks the adapter's tensors by module names, and under
    ATorch's activation checkpointing those contain ``_checkpoint_wrapped_module`` while state_dict
    keys do not, so it writes an empty adapter (peft 0.21). ``state_dict`` is the full model's
    (gathered under FSDP); None reads the model's own.
    """
    adapter_name = model.active_adapter
    state_dict = model.state_dict() if state_dict is None else state_dict
    marker = f".{adapter_name}."
    adapter = {key.replace(marker, "."): tensor.detach().cpu().contiguous()
               for key, tensor in state_dict.items() if "lora_" in key and marker in key}
    if not adapter:
        raise RuntimeError(f"no LoRA tensors for adapter {adapter_name!r} in the model's state_dict")
    model.peft_config[adapter_name].save_pretrained(str(folder))
    save_file(adapter, str(Path(folder) / "adapter_model.safetensors"), metadata={"format": "pt"})


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").exists()


def load_for_inference(adapter: str | Path, base: str | Path | None = None) -> PreTrainedModel:
    """Base model + adapter, ready for generation. The base defaults to the one in adapter_config.json."""
    from peft import PeftConfig
    from transformers import AutoModelForCausalLM

    base = base or PeftConfig.from_pretrained(str(adapter)).base_model_name_or_path
    model = AutoModelForCausalLM.from_pretrained(str(base))
    return PeftModel.from_pretrained(model, str(adapter))


def merge(adapter: str | Path, base: str | Path | None = None) -> PreTrainedModel:
    """The base model with the adapter folded into its weights (a plain HF model)."""
    return load_for_inference(adapter, base).merge_and_unload()
