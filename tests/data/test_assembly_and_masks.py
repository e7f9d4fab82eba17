"""Assembly and loss masks, against hand-computed expectations with both tokenizers.

Each case lists the pieces of the expected sequence with their mask; every piece is tokenized on its own
(markers apart from content, as the reference does). For GPT-NeoX-20B the ids are also written out.
"""

import pytest
from data_fixtures import EOS, chat, expected, make_config, tokenize
from mft_trainer.config import DataConfig
from mft_trainer.data import build_prompt, encode_prompt, load_tokenizer

SYS, HUM, BOT = (f"<|role_start|>{r}<|role_end|>" for r in ("system", "human", "bot"))

CASES = {
    "multi-turn with system": (
        chat(
            ("system", "Be brief."),
            ("human", "Add 1 and 2."),
            ("bot", "3"),
            ("human", "Thanks!"),
            ("bot", "You are welcome."),
        ),
        [
            (SYS, 0),
            ("Be brief.", 0),
            (HUM, 0),
            ("Add 1 and 2.", 0),
            (BOT, 0),
            ("3", 1),
            (EOS, 1),
            (HUM, 0),
            ("Thanks!", 0),
            (BOT, 0),
            ("You are welcome.", 1),
            (EOS, 1),
        ],
    ),
    "no system": (
        chat(("user", "Add 1 and 2."), ("assistant", "3")),
        [(HUM, 0), ("Add 1 and 2.", 0), (BOT, 0), ("3", 1), (EOS, 1)],
    ),
    "prompt/answer": (
        {"prompt": "Add 1 and 2.", "answer": "3", "system": "Be brief."},
        [(SYS, 0), ("Be brief.", 0), (HUM, 0), ("Add 1 and 2.", 0), (BOT, 0), ("3", 1), (EOS, 1)],
    ),
    "text": ({"text": "def f():\n    return 1"}, [("def f():\n    return 1", 1), (EOS, 1)]),
    "unicode": (
        chat(("human", "写一个函数 🐍"), ("bot", "🐍 写")),
        [(HUM, 0), ("写一个函数 🐍", 0), (BOT, 0), ("🐍 写", 1), (EOS, 1)],
    ),
    "empty content": (chat(("system", ""), ("human", ""), ("bot", "")), [(SYS, 0), (HUM, 0), (BOT, 0), (EOS, 1)]),
    "ends on a human turn": (
        chat(("human", "Add 1 and 2."), ("bot", "3"), ("human", "Thanks!")),
        [(HUM, 0), ("Add 1 and 2.", 0), (BOT, 0), ("3", 1), (EOS, 1), (HUM, 0), ("Thanks!", 0)],
    ),
    "literal markers in content": (
        chat(("human", "x<|endoftext|>y"), ("bot", 'print("<|role_start|>bot<|role_end|>")')),
        [(HUM, 0), ("x<|endoftext|>y", 0), (BOT, 0), ('print("<|role_start|>bot<|role_end|>")', 1), (EOS, 1)],
    ),
}

# GPT-NeoX-20B ids, written out: markers are "<", "|", "role", "_", "start", "|>", ROLE, "<", "|", "role", "_", "end", "|>".
NEOX_MARKER = {
    r: [29, 93, 14337, 64, 5478, 49651, i, 29, 93, 14337, 64, 423, 49651]
    for r, i in (("system", 10394), ("human", 13961), ("bot", 12042))
}
NEOX_IDS = {
    "multi-turn with system": NEOX_MARKER["system"]
    + [4678, 4864, 15]
    + NEOX_MARKER["human"]
    + [4717, 337, 285, 374, 15]
    + NEOX_MARKER["bot"]
    + [20, 0]
    + NEOX_MARKER["human"]
    + [8061, 2]
    + NEOX_MARKER["bot"]
    + [1394, 403, 10112, 15, 0],
    "text": [1545, 269, 14850, 187, 50274, 2309, 337, 0],
    "literal markers in content": NEOX_MARKER["human"]
    + [89, 29, 93, 423, 1171, 1156, 49651, 90]
    + NEOX_MARKER["bot"]
    + [3845, 43467, 93, 14337, 64, 5478, 49651, 12042, 29, 93, 14337, 64, 423, 49651, 2807, 0],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hand_computed(tokenizer, case):
    record, pieces = CASES[case]
    ((text, ids, mask),) = tokenize(tokenizer, [record])
    assert (text, ids, mask) == expected(tokenizer, pieces)


@pytest.mark.parametrize("case", sorted(NEOX_IDS))
def test_gpt_neox_ids_written_out(neox_tokenizer, case):
    ((_, ids, _),) = tokenize(neox_tokenizer, [CASES[case][0]])
    assert ids == NEOX_IDS[case]


def test_literal_eos_in_content_is_text(neox_tokenizer):
    ((_, ids, mask),) = tokenize(neox_tokenizer, [chat(("human", "q"), ("bot", "a<|endoftext|>b"))])
    assert ids.count(neox_tokenizer.eos_token_id) == 1 and ids[-1] == neox_tokenizer.eos_token_id


def test_sst_trains_on_every_token(tokenizer):
    record, pieces = CASES["multi-turn with system"]
    ((text, ids, mask),) = tokenize(tokenizer, [record], mode="sst")
    assert (text, ids) == expected(tokenizer, pieces)[:2]
    assert mask == [1] * len(ids)


def test_markers_as_special_tokens(neox_dir, tmp_path):
    tokenizer = load_tokenizer(make_config(neox_dir, markers_as_special_tokens=True))
    start, end = tokenizer.convert_tokens_to_ids(["<|role_start|>", "<|role_end|>"])
    assert (start, end) == (50277, 50278) and len(tokenizer) == 50279
    record = chat(("human", "<|role_start|>"), ("bot", "3"))
    ((_, ids, mask),) = tokenize(tokenizer, [record], markers_as_special_tokens=True)
    # Markers are single ids; the same text inside content stays plain text.
    assert ids == [start, 13961, end] + NEOX_MARKER["bot"][:6] + [start, 12042, end, 20, 0]
    assert mask == [0] * 12 + [1, 1]


def test_custom_markers_and_eos(tiny_dir):
    tokenizer = load_tokenizer(make_config(tiny_dir, eos_token="<|padding|>"))
    assert tokenizer.eos_token_id == 1
    ((text, ids, mask),) = tokenize(tokenizer, [chat(("human", "q"), ("bot", "a"))], role_start="<<", role_end=">>")
    assert text == "<<human>>q<<bot>>a<|padding|>"
    assert ids[-1] == 1 and mask[-1] == 1


def test_punctuation_normalization_is_optional(tiny_tokenizer):
    record = chat(("human", "你好，世界！"), ("bot", "print（１）。"))
    ((plain, _, _),) = tokenize(tiny_tokenizer, [record])
    ((normalized, _, _),) = tokenize(tiny_tokenizer, [record], normalize_punctuation=True)
    assert "你好，世界！" in plain
    assert normalized == f"{HUM}你好,世界!{BOT}print(1).<|endoftext|>"


def test_build_prompt():
    assert build_prompt("Add 1 and 2.") == f"{HUM}Add 1 and 2.{BOT}"
    assert build_prompt("Add 1 and 2.", system="Be brief.") == f"{SYS}Be brief.{HUM}Add 1 and 2.{BOT}"
    history = [
        {"role": "human", "content": "Add 1 and 2."},
        {"role": "bot", "content": "3"},
        {"role": "user", "content": "Thanks!"},
    ]
    assert build_prompt(history, eos_token="<|endoftext|>") == f"{HUM}Add 1 and 2.{BOT}3<|endoftext|>{HUM}Thanks!{BOT}"
    assert build_prompt("q", data_config=DataConfig(role_start="<", role_end=">")) == "<human>q<bot>"
    with pytest.raises(ValueError, match="pass eos_token"):
        build_prompt(history)
    with pytest.raises(ValueError, match="must end with a human turn"):
        build_prompt(history[:2], eos_token="<|endoftext|>")


def test_prompt_ids_are_the_training_prefix(tokenizer):
    record, _ = CASES["multi-turn with system"]
    ((_, training_ids, _),) = tokenize(tokenizer, [record])
    turns = record["chat_rounds"]
    prompt_ids = encode_prompt(turns[1:4], tokenizer, system="Be brief.")
    assert training_ids[: len(prompt_ids)] == prompt_ids
    bot_marker = tokenizer.encode(BOT, add_special_tokens=False)
    assert prompt_ids[-len(bot_marker) :] == bot_marker
