"""Packed rows: every document sees only itself, so a packed row gives the logits of its documents run alone.
A model as build_model makes it, saved, stops at the tokenizer's eos in plain transformers."""

from unittest import mock

import pytest
import torch

from mft_trainer.config import from_dict
from mft_trainer.data import load_tokenizer
from mft_trainer.attention import block_diagonal_mask, document_spans
from mft_trainer.model import build_model, is_packed, model_inputs

from tests.training_processes import TINY, TOKENIZER

from .conftest import tiny_model


def test_packed_row_matches_documents_run_separately(tokenizer):
    model = tiny_model(len(tokenizer))
    docs = [tokenizer("def add(a, b):\n    return a + b")["input_ids"],
            tokenizer("print('hello world')")["input_ids"],
            tokenizer("x = [i * i for i in range(10)]")["input_ids"]]
    pad = 4
    length = sum(map(len, docs)) + pad
    input_ids = torch.cat([torch.tensor(d) for d in docs] + [torch.full((pad,), tokenizer.pad_token_id)])[None]
    position_ids = torch.cat([torch.arange(len(d)) for d in docs] + [torch.zeros(pad, dtype=torch.long)])[None]
    sample_index = torch.cat([torch.full((len(d),), i) for i, d in enumerate(docs)] + [torch.full((pad,), -1)])[None]
    batch = {"input_ids": input_ids, "position_ids": position_ids, "sample_index": sample_index}
    assert input_ids.shape[1] == length and is_packed(sample_index)

    with torch.no_grad():
        packed = model(**model_inputs(batch, torch.device("cpu"))).logits[0]
        start = 0
        for doc in docs:
            alone = model(input_ids=torch.tensor(doc)[None]).logits[0]
            torch.testing.assert_close(packed[start:start + len(doc)], alone, atol=1e-5, rtol=0)
            start += len(doc)


def training_model(tokenizer):
    return tiny_model(len(tokenizer), use_cache=False)  # as build_model makes it: no KV cache in training


def attention_calls(model, inputs) -> list[tuple[tuple[int, ...] | None, bool]]:
    """(mask shape or None, is_causal) of every sdpa call in one forward pass."""
    import transformers.integrations.sdpa_attention as sdpa

    calls, sdpa_function = [], sdpa.torch.nn.functional.scaled_dot_product_attention

    def recording(*args, attn_mask=None, is_causal=False, **kwargs):
        calls.append((None if attn_mask is None else tuple(attn_mask.shape), is_causal))
        return sdpa_function(*args, attn_mask=attn_mask, is_causal=is_causal, **kwargs)

    with mock.patch.object(sdpa.torch.nn.functional, "scaled_dot_product_attention", recording), torch.no_grad():
        model(**inputs)
    return calls


def test_single_document_rows_take_sdpas_causal_path(tokenizer):
    sample_index = torch.tensor([[0, 0, 0, -1], [0, 0, -1, -1]])
    batch = {"input_ids": torch.full((2, 4), 5), "position_ids": torch.zeros(2, 4, dtype=torch.long),
             "sample_index": sample_index}
    assert not is_packed(sample_index)
    calls = attention_calls(training_model(tokenizer), model_inputs(batch, torch.device("cpu")))
    # No materialised mask: sdpa may use its fastest (flash) kernel.
    assert calls and set(calls) == {(None, True)}


def test_packed_rows_get_the_block_diagonal_mask(tokenizer):
    sample_index = torch.tensor([[0, 0, 1, 1], [0, 0, 0, -1]])
    batch = {"input_ids": torch.full((2, 4), 5), "position_ids": torch.tensor([[0, 1, 0, 1], [0, 1, 2, 0]]),
             "sample_index": sample_index}
    calls = attention_calls(training_model(tokenizer), model_inputs(batch, torch.device("cpu")))
    assert calls and set(calls) == {((2, 1, 4, 4), False)}


def test_mask_is_block_diagonal_causal_and_pads_see_something():
    mask = block_diagonal_mask(document_spans(torch.tensor([[0, 0, 1, 1, -1]])), 1, 5)[0, 0]
    expected = torch.tensor([[1, 0, 0, 0, 0],
                             [1, 1, 0, 0, 0],
                             [0, 0, 1, 0, 0],
                             [0, 0, 1, 1, 0],
                             [0, 0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)


def always_says(model, token_id: int) -> None:
    """Make ``model`` predict ``token_id`` after any input."""
    with torch.no_grad():
        model.gpt_neox.final_layer_norm.weight.zero_()
        model.gpt_neox.final_layer_norm.bias.fill_(1.0)
        model.embed_out.weight.zero_()
        model.embed_out.weight[token_id] = 1.0


def trainer_config(how: str, base_model) -> dict:
    if how == "sst from scratch":  # GPTNeoXConfig's own eos is 2
        return {"mode": "sst", "model": {"config": TINY, "tokenizer_path": str(TOKENIZER)}, "data": {"paths": ["/d"]}}
    # The base model's generation_config.json has eos 2 too, and the eos is another token still.
    return {"mode": "sft", "model": {"path": str(base_model)}, "data": {"paths": ["/d"], "eos_token": "<|padding|>"}}


@pytest.mark.parametrize("how", ["sst from scratch", "sft with data.eos_token"])
def test_a_saved_model_stops_at_the_tokenizers_eos_in_plain_transformers(how, base_model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = from_dict(trainer_config(how, base_model))
    trained_tokenizer = load_tokenizer(config)
    built = build_model(config, trained_tokenizer)
    always_says(built, trained_tokenizer.eos_token_id)
    built.save_pretrained(tmp_path)  # as checkpoints save it
    trained_tokenizer.save_pretrained(tmp_path)

    model, tokenizer = AutoModelForCausalLM.from_pretrained(tmp_path), AutoTokenizer.from_pretrained(tmp_path)
    expected = (tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id)
    for settings in (model.generation_config, model.config):
        assert (settings.eos_token_id, settings.pad_token_id, settings.bos_token_id) == expected
    prompt = tokenizer("def add(a, b):", return_tensors="pt")  # input_ids and attention_mask only
    output = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert output[0, prompt["input_ids"].shape[1]:].tolist() == [tokenizer.eos_token_id]
