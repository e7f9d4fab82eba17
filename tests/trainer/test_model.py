"""Packed rows: every document sees only itself, so a packed row gives the logits of its documents run alone."""

from unittest import mock

import torch

from mft_trainer.model import is_packed, model_inputs, packed_attention_mask

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
    mask = packed_attention_mask(torch.tensor([[0, 0, 1, 1, -1]]))[0, 0]
    expected = torch.tensor([[1, 0, 0, 0, 0],
                             [1, 1, 0, 0, 0],
                             [0, 0, 1, 0, 0],
                             [0, 0, 1, 1, 0],
                             [0, 0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)
