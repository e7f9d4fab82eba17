"""The chat template saved with the tokenizer renders a conversation as training assembles it, and,
with the role markers made special tokens, tokenizes it to the ids training feeds the model. Each
tokenizer as a checkpoint saves it and a server loads it: load_tokenizer, save_pretrained,
AutoTokenizer.from_pretrained."""

import pytest
from data_fixtures import chat, make_config, tokenize
from jinja2.exceptions import TemplateError
from mft_trainer.config import DataConfig
from mft_trainer.data import build_prompt, encode_prompt, load_tokenizer
from transformers import AutoTokenizer

CONVERSATIONS = [
    [("human", "Write a function that reverses a list."), ("bot", "def reverse(items):\n    return items[::-1]")],
    [("system", "You are a helpful Python coding assistant."), ("human", "I need a function `count_items`."),
     ("bot", "Here it is: `len(items)`."), ("human", "  And for a dict?\n"), ("bot", "The same.\n")],
    [("user", "What is 2+2？"), ("assistant", "４。"), ("user", "Times three?"), ("assistant", "12【ok】")],
]
SETTINGS = {
    "defaults": {},
    "own markers, punctuation normalized": {"role_start": "<|im_start|>", "role_end": "<|im_sep|>",
                                            "normalize_punctuation": True},
}
# Plain-text markers: `.<` is one token of both tokenizers, so a question ending in "." tokenizes
# otherwise in one piece than training tokenizes it (markers apart from content).
MERGING_BOUNDARY = [("human", "Write a function that reverses a list.")]

_served: dict[tuple, tuple] = {}


@pytest.fixture
def tokenizers(tokenizer_dir, tmp_path_factory):
    """(as training loads it, as a server loads it from a checkpoint) for the given data settings."""

    def get(markers_as_special_tokens: bool, **data):
        key = (tokenizer_dir, markers_as_special_tokens, tuple(sorted(data.items())))
        if key not in _served:
            trained = load_tokenizer(make_config(tokenizer_dir, markers_as_special_tokens=markers_as_special_tokens,
                                                 **data))
            folder = tmp_path_factory.mktemp("checkpoint")
            trained.save_pretrained(folder)
            _served[key] = trained, AutoTokenizer.from_pretrained(folder)
        return _served[key]

    return get


def messages(turns):
    return [{"role": role, "content": content} for role, content in turns]


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("special", [False, True], ids=["plain markers", "special markers"])
@pytest.mark.parametrize("turns", CONVERSATIONS)
def test_the_template_renders_the_training_text(tokenizers, turns, special, settings):
    data = SETTINGS[settings]
    trained, served = tokenizers(special, **data)
    (text, _, _), = tokenize(trained, [chat(*turns)], markers_as_special_tokens=special, **data)
    assert served.apply_chat_template(messages(turns), tokenize=False) == text
    prompt = build_prompt(messages(turns[:-1]), data_config=DataConfig(**data), eos_token=trained.eos_token)
    assert served.apply_chat_template(messages(turns[:-1]), tokenize=False, add_generation_prompt=True) == prompt


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("turns", CONVERSATIONS)
def test_with_special_markers_the_template_gives_the_training_ids(tokenizers, turns, settings):
    data = SETTINGS[settings]
    trained, served = tokenizers(True, **data)
    (_, ids, _), = tokenize(trained, [chat(*turns)], markers_as_special_tokens=True, **data)
    assert served.apply_chat_template(messages(turns)) == ids
    prompt = encode_prompt(messages(turns[:-1]), trained, data_config=DataConfig(**data))
    assert served.apply_chat_template(messages(turns[:-1]), add_generation_prompt=True) == prompt


def test_with_plain_markers_one_piece_tokenization_can_differ_from_training(tokenizers):
    """Why the README recommends markersAsSpecialTokens for models served outside `mft-train generate`."""
    trained, served = tokenizers(False)
    rendered = served.apply_chat_template(messages(MERGING_BOUNDARY), add_generation_prompt=True)
    assert rendered != encode_prompt(messages(MERGING_BOUNDARY), trained)
    assert served.decode(rendered) == build_prompt(messages(MERGING_BOUNDARY))


def test_the_template_refuses_an_unknown_role(tokenizers):
    served = tokenizers(False)[1]
    with pytest.raises(TemplateError, match="expected the role system, human or bot .*, found tool"):
        served.apply_chat_template([{"role": "tool", "content": "42"}], tokenize=False)
