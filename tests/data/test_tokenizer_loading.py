"""load_tokenizer, the fingerprint, and the two test tokenizers."""

import importlib.util
import json

import pytest
from data_fixtures import make_config
from mft_trainer.data import TINY_TOKENIZER_DIR, DataError, load_tokenizer, tokenizer_fingerprint


def test_tiny_tokenizer(tiny_tokenizer):
    assert len(tiny_tokenizer) == 4096
    assert (tiny_tokenizer.eos_token, tiny_tokenizer.eos_token_id) == ("<|endoftext|>", 0)
    assert (tiny_tokenizer.pad_token, tiny_tokenizer.pad_token_id) == ("<|padding|>", 1)
    # What GPT-NeoX's forward and generate take: no token_type_ids.
    assert tiny_tokenizer("def f():").keys() == {"input_ids", "attention_mask"}


def test_gpt_neox_tokenizer(neox_tokenizer):
    assert len(neox_tokenizer) == 50277
    assert neox_tokenizer.encode("hello world") == [25521, 1533]
    # GPT-NeoX-20B ships no pad token: eos stands in (padding is masked everywhere).
    assert neox_tokenizer.pad_token_id == neox_tokenizer.eos_token_id == 0


def test_tiny_tokenizer_is_reproducible_from_its_script():
    spec = importlib.util.spec_from_file_location("make_tokenizer", TINY_TOKENIZER_DIR.parent / "make_tokenizer.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    trained = json.loads(script.build().to_str())
    committed = json.loads((TINY_TOKENIZER_DIR / "tokenizer.json").read_text())
    assert trained["model"] == committed["model"]
    assert [t["content"] for t in trained["added_tokens"]] == [t["content"] for t in committed["added_tokens"]]


def test_fingerprint(tiny_dir, neox_dir, tiny_tokenizer, neox_tokenizer):
    assert tokenizer_fingerprint(tiny_tokenizer) == tokenizer_fingerprint(load_tokenizer(make_config(tiny_dir)))
    assert tokenizer_fingerprint(tiny_tokenizer) != tokenizer_fingerprint(neox_tokenizer)
    with_markers = load_tokenizer(make_config(tiny_dir, markers_as_special_tokens=True))
    assert tokenizer_fingerprint(with_markers) != tokenizer_fingerprint(tiny_tokenizer)
    truncating = load_tokenizer(make_config(tiny_dir))
    truncating.backend_tokenizer.enable_truncation(8)
    assert tokenizer_fingerprint(truncating) == tokenizer_fingerprint(tiny_tokenizer)


def test_errors(tmp_path, tiny_dir):
    with pytest.raises(DataError, match="data.eos_token: expected a token of the tokenizer at .*, found '</s>'"):
        load_tokenizer(make_config(tiny_dir, eos_token="</s>"))
    with pytest.raises(DataError, match="model.tokenizer_path: expected a tokenizer folder"):
        load_tokenizer(make_config(""))
    with pytest.raises(DataError, match="expected a Hugging Face tokenizer folder, cannot load it"):
        load_tokenizer(make_config(tmp_path))
