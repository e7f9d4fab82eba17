"""Packed rows: every document sees only itself, so a packed row gives the logits of its documents run alone."""

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


def test_single_document_rows_use_the_plain_causal_path():
    sample_index = torch.tensor([[0, 0, 0, -1], [0, 0, -1, -1]])
    batch = {"input_ids": torch.zeros(2, 4, dtype=torch.long), "position_ids": torch.zeros(2, 4, dtype=torch.long),
             "sample_index": sample_index}
    assert not is_packed(sample_index)
    assert set(model_inputs(batch, torch.device("cpu"))) == {"input_ids"}


def test_mask_is_block_diagonal_causal_and_pads_see_something():
    mask = packed_attention_mask(torch.tensor([[0, 0, 1, 1, -1]]))[0, 0]
    expected = torch.tensor([[1, 0, 0, 0, 0],
                             [1, 1, 0, 0, 0],
                             [0, 0, 1, 0, 0],
                             [0, 0, 1, 1, 0],
                             [0, 0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)
