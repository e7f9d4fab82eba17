"""The loss-mask property over random dialogs: decoding exactly the trained tokens gives the bot contents,
each followed by eos, and nothing else."""

import unicodedata

from data_fixtures import chat, tokenize
from hypothesis import given, settings
from hypothesis import strategies as st

MARKER_TEXT = st.sampled_from(["<|role_start|>", "<|role_end|>", "<|endoftext|>", "<|padding|>", "bot", "\n", "    "])
content = st.lists(st.one_of(st.text(max_size=12), MARKER_TEXT), max_size=4).map("".join)
turn = st.tuples(st.sampled_from(["system", "human", "bot", "user", "assistant"]), content)
# At least one bot turn: a record with nothing to learn from is a bad record (test_jsonl_records).
dialog = st.lists(turn, min_size=1, max_size=6).filter(lambda turns: any(r in ("bot", "assistant") for r, _ in turns))


def trained_text(tokenizer, ids, mask):
    return tokenizer.backend_tokenizer.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=False)


@settings(max_examples=60, deadline=None)
@given(dialogs=st.lists(dialog, min_size=1, max_size=3))
def test_trained_tokens_decode_to_bot_contents(tokenizer, dialogs):
    outputs = tokenize(tokenizer, [chat(*turns) for turns in dialogs])
    for turns, (_, ids, mask) in zip(dialogs, outputs):
        bots = [c for role, c in turns if role in ("bot", "assistant")]
        # GPT-NeoX's (and the tiny tokenizer's) normalizer is NFC.
        assert trained_text(tokenizer, ids, mask) == "".join(
            unicodedata.normalize("NFC", c) + tokenizer.eos_token for c in bots
        )
        assert sum(mask) == sum(
            len(tokenizer.encode(c, add_special_tokens=False, split_special_tokens=True)) + 1 for c in bots
        )
        assert ids.count(tokenizer.eos_token_id) == len(bots)
