"""LoRA through peft. Applied before ``auto_accelerate`` so ATorch wraps the peft model.

When the tokenizer adds tokens the base model has no rows for (role markers made special tokens),
``build_model`` grows the embeddings with random rows. Those rows exist nowhere but in this run,
so the input and output embedding layers are trained in full and saved with the adapter (peft's
``modules_to_save``), as peft's own recipe for added tokens does; loading the adapter grows the
base model to the same size first (``load_for_inference``).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftConfig, PeftModel, get_peft_model
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoConfig, PreTrainedModel

from mft_trainer.config import LoraConfig
from mft_trainer.model import count_parameters, fit_embeddings

log = logging.getLogger(__name__)

WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # of every key in a peft file: the base model inside the PeftModel


def apply_lora(model: PreTrainedModel, lora: LoraConfig, adapter: str | Path | None = None) -> PeftModel:
    """Wrap ``model`` with fresh LoRA layers, or with the trainable ``adapter`` saved in a checkpoint
    (its adapter_config.json names the layers saved in full, if any) and the configured dropout."""
    if adapter is not None:
        peft_model = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
        _keep_dropout(peft_model, lora.dropout)
    else:
        peft_config = PeftLoraConfig(task_type="CAUSAL_LM", r=lora.r, lora_alpha=lora.alpha,
                                     lora_dropout=lora.dropout, target_modules=list(lora.target_modules),
                                     modules_to_save=_grown_embeddings(model))
        peft_model = get_peft_model(model, peft_config)
    trainable, total = count_parameters(peft_model, trainable_only=True), count_parameters(peft_model)
    log.info("LoRA r=%d alpha=%d on %s: %d of %d parameters trainable", lora.r, lora.alpha,
             ",".join(lora.target_modules), trainable, total)
    return peft_model


def _keep_dropout(model: PeftModel, configured: float) -> None:
    """Put the configured lora.dropout on a loaded adapter, which comes with the dropout it was saved
    with: like the learning rate, a resumed run uses the new value, and its checkpoints record it.
    peft makes a dropout of 0 an ``nn.Identity``, so the modules are replaced, not given another p."""
    adapter_name = model.active_adapter
    config = model.peft_config[adapter_name]
    if config.lora_dropout == configured:
        return
    log.info("lora.dropout: %s in the checkpoint, %s now: the resumed run uses %s",
             config.lora_dropout, configured, configured)
    config.lora_dropout = configured
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, torch.nn.ModuleDict) and adapter_name in dropouts:
            dropouts[adapter_name] = torch.nn.Dropout(configured) if configured > 0 else torch.nn.Identity()


def _grown_embeddings(model: PreTrainedModel) -> list[str] | None:
    """The names of the embedding layers (GPT-NeoX: embed_in, embed_out) when ``model`` has more
    vocabulary rows than the base model it was loaded from, else None."""
    rows = model.get_input_embeddings().num_embeddings
    if not model.name_or_path or rows <= AutoConfig.from_pretrained(model.name_or_path).vocab_size:
        return None
    layers = (model.get_input_embeddings(), model.get_output_embeddings())
    names = [_name_of(model, layer).rsplit(".", 1)[-1] for layer in layers]
    log.info("the tokenizer adds tokens the base model has no rows for: %s trained in full and saved with the "
             "adapter", ", ".join(names))
    return names


def save_adapter(model: PeftModel, state_dict: dict[str, torch.Tensor] | None, folder: Path) -> None:
    """Write the adapter as peft does (adapter_config.json, adapter_model.safetensors): the LoRA
    tensors and the layers saved in full (``modules_to_save``), under peft's names (``peft_name``).

    Not ``PeftModel.save_pretrained``: peft picks the adapter's tensors by module names, and under
    ATorch's activation checkpointing those contain ``_checkpoint_wrapped_module`` while state_dict
    keys do not, so it writes an empty adapter (peft 0.21). ``state_dict`` is the model's, whole or
    only the adapter's entries (a checkpoint snapshot's); None reads the model's own.
    """
    adapter_name = model.active_adapter
    state_dict = model.state_dict() if state_dict is None else state_dict
    adapter = {}
    for key, tensor in state_dict.items():
        name = peft_name(key, adapter_name)
        if name is not None:
            adapter[name] = tensor.detach().cpu().contiguous()
    if not any("lora_" in name for name in adapter):
        raise RuntimeError(f"no LoRA tensors for adapter {adapter_name!r} in the model's state_dict")
    _inference_config(model.peft_config[adapter_name]).save_pretrained(str(folder))
    save_file(adapter, str(Path(folder) / WEIGHTS_FILE), metadata={"format": "pt"})


def _inference_config(config: PeftConfig) -> PeftConfig:
    """A copy of the live adapter config marked for inference, as ``PeftModel.save_pretrained`` writes
    it (loading for training sets the flag back). A copy, as this may run on the checkpoint writer's
    thread while training goes on."""
    saved = copy.copy(config)
    saved.inference_mode = True
    return saved


def peft_name(key: str, adapter_name: str) -> str | None:
    """The name in adapter_model.safetensors of the state_dict entry ``key`` when it belongs to the
    adapter, else None: peft's names drop the adapter name (``<module>.lora_A.<adapter>.weight`` ->
    ``<module>.lora_A.weight``, ``<module>.modules_to_save.<adapter>.weight`` -> ``<module>.weight``)."""
    saved_in_full, marker = f".modules_to_save.{adapter_name}.", f".{adapter_name}."
    if saved_in_full in key:
        return key.replace(saved_in_full, ".")
    if "lora_" in key and marker in key:
        return key.replace(marker, ".")
    return None


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").exists()


def base_model_path(adapter: str | Path) -> str:
    """The base model an adapter was trained on, as its adapter_config.json names it."""
    return PeftConfig.from_pretrained(str(adapter)).base_model_name_or_path


def load_for_inference(adapter: str | Path, base: str | Path | None = None) -> PeftModel:
    """Base model + adapter, ready for generation. The base defaults to the one in adapter_config.json;
    it is grown to the vocabulary of the embedding layers saved with the adapter, if any."""
    from transformers import AutoModelForCausalLM

    base = str(base or base_model_path(adapter))
    if Path(base).is_absolute() and not Path(base).exists():
        raise FileNotFoundError(f"{adapter}: its base model {base} (adapter_config.json) is not here; "
                                f"give the base model folder with --base")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    rows = _saved_vocab_size(model, adapter)
    if rows is not None:
        fit_embeddings(model, rows)  # peft loads the saved layers only into layers of their size
    return PeftModel.from_pretrained(model, str(adapter))


def _saved_vocab_size(model: PreTrainedModel, adapter: str | Path) -> int | None:
    """The rows of the input embedding saved with the adapter, if it was saved in full."""
    file = Path(adapter) / WEIGHTS_FILE
    if not file.is_file():
        return None
    key = f"{PEFT_PREFIX}{_name_of(model, model.get_input_embeddings())}.weight"
    with safe_open(str(file), framework="pt") as saved:
        return saved.get_slice(key).get_shape()[0] if key in saved.keys() else None


def _name_of(model: torch.nn.Module, layer: torch.nn.Module) -> str:
    return next(name for name, module in model.named_modules() if module is layer)


def merge(adapter: str | Path, base: str | Path | None = None, dtype: str = "auto") -> PreTrainedModel:
    """The base model with the adapter folded into its weights (a plain HF model), in ``dtype``: a
    torch dtype's name, or "auto" for the base model's (from its config.json; float32 when it names
    none). The merge itself runs in float32, so that the weights are rounded once, at the end."""
    base = str(base or base_model_path(adapter))
    merged = load_for_inference(adapter, base).merge_and_unload()
    return merged.to(_merged_dtype(dtype, base))


def _merged_dtype(choice: str, base: str) -> torch.dtype:
    if choice == "auto":
        choice = AutoConfig.from_pretrained(base).dtype or "float32"
    return getattr(torch, str(choice).removeprefix("torch."))
