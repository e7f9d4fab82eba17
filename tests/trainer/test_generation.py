"""Generation: stops at eos, left padding keeps batched answers equal to single ones."""

import torch

from mft_trainer.config import DataConfig
from mft_trainer.data import build_prompt
from mft_trainer.data import encode_prompt
from mft_trainer.generation import Sampling, generate, prompt_ids

from .conftest import tiny_model


def left_padded(tokenizer):
    tokenizer = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tokenizer.padding_side = "left"
    return tokenizer


def test_generation_stops_at_eos(tokenizer):
    """A model whose every next token is eos: the answer is empty and generation ends right there."""
    model = tiny_model(len(tokenizer))
    with torch.no_grad():
        model.gpt_neox.final_layer_norm.weight.zero_()
        model.gpt_neox.final_layer_norm.bias.fill_(1.0)
        model.embed_out.weight.zero_()
        model.embed_out.weight[tokenizer.eos_token_id] = 1.0
    tok = left_padded(tokenizer)
    prompt = build_prompt("What is 1 + 1?", data_config=DataConfig())
    batch = tok([prompt], return_tensors="pt", add_special_tokens=False)
    out = model.generate(**batch, max_new_tokens=10, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    assert out.shape[1] == batch["input_ids"].shape[1] + 1 and out[0, -1] == tok.eos_token_id
    assert generate(model, tok, [prompt_ids(tok, "What is 1 + 1?")], Sampling(max_new_tokens=10)) == [""]


def test_left_padded_batch_matches_single_prompts(tokenizer):
    model = tiny_model(len(tokenizer), seed=5)
    tok = left_padded(tokenizer)
    prompts = [prompt_ids(tok, q) for q in ("Hi", "Write a function that adds two numbers")]
    sampling = Sampling(max_new_tokens=6)
    assert generate(model, tok, prompts, sampling) == [generate(model, tok, [p], sampling)[0] for p in prompts]


def test_prompt_ids_are_the_training_tokenization_of_the_prompt(tokenizer):
    question = "Fix this: print(x)"
    ids = prompt_ids(tokenizer, question, system="Be brief.")
    assert ids == encode_prompt(question, tokenizer, system="Be brief.")
    assert tokenizer.decode(ids) == build_prompt(question, system="Be brief.", data_config=DataConfig())
