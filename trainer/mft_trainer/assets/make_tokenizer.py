"""Train the tiny byte-level BPE tokenizer shipped in `tokenizer-tiny/`.

The demo model and the trainer tests need a real tokenizer without a model hub. This one has the
structure of GPT-NeoX-20B's (NFC normalizer, byte-level pre-tokenizer and decoder, `<|endoftext|>`
as id 0, `<|padding|>` as id 1) with a 4096-token vocabulary learned from the sample data set in
`examples/data/` plus generated code-like text. Role markers stay plain text, as in the reference.

Run from the repository root: `python trainer/mft_trainer/assets/make_tokenizer.py`. The result depends
only on the sample data and the seed below, so rerunning it reproduces the committed files.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
SAMPLE_DATA = REPO / "examples" / "data"
OUTPUT = HERE / "tokenizer-tiny"

VOCAB_SIZE = 4096
SEED = 7
EOS, PAD = "<|endoftext|>", "<|padding|>"
ROLE_START, ROLE_END = "<|role_start|>", "<|role_end|>"

KEYWORDS = [
    "def",
    "return",
    "class",
    "import",
    "from",
    "for",
    "while",
    "if",
    "elif",
    "else",
    "try",
    "except",
    "with",
    "as",
    "yield",
    "lambda",
    "in",
    "not",
    "and",
    "or",
    "is",
    "None",
    "True",
    "False",
    "self",
]
NAMES = [
    "value",
    "values",
    "items",
    "index",
    "count",
    "total",
    "result",
    "name",
    "path",
    "data",
    "line",
    "text",
    "node",
    "key",
    "size",
    "left",
    "right",
    "start",
    "end",
    "tokens",
    "batch",
    "model",
    "config",
    "parser",
    "args",
    "buffer",
    "offset",
    "length",
    "matrix",
    "row",
    "column",
    "cache",
    "queue",
    "stack",
]
WORDS = (
    "the a an of to in is it that for on with as by this be are from at or which not have one all "
    "when can has but more each if will been into only its also new other used first any may should where "
    "after before returns return given list value number string file line function method class object "
    "default empty error raise check make keep sort read write open close start stop first last next "
    "previous same different small large short long simple fast slow every item pair key map set tree "
    "graph edge node path name size count index offset length width height order level state result "
    "input output source target buffer stream token batch model layer weight step epoch task rank"
).split()
CALLS = [
    "len",
    "sum",
    "max",
    "min",
    "sorted",
    "range",
    "enumerate",
    "zip",
    "print",
    "open",
    "isinstance",
    "append",
    "extend",
    "split",
    "join",
    "strip",
    "items",
    "keys",
    "get",
    "format",
    "read",
    "write",
]


def sample_texts() -> Iterator[str]:
    """Every record of the sample data set, assembled with role markers and eos like training sees it."""
    for path in sorted(SAMPLE_DATA.glob("*/*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if "chat_rounds" in record:
                turns = [(t["role"], t["content"]) for t in record["chat_rounds"]]
            elif "prompt" in record:
                turns = [("system", record.get("system", "")), ("human", record["prompt"]), ("bot", record["answer"])]
            else:
                yield record["text"] + EOS
                continue
            yield "".join(
                f"{ROLE_START}{role}{ROLE_END}{content}" + (EOS if role == "bot" else "") for role, content in turns
            )


def code_like_texts(count: int) -> Iterator[str]:
    """Small random Python functions, so common code tokens get merges beyond the sample data."""
    rng = random.Random(SEED)
    for _ in range(count):
        name = f"{rng.choice(CALLS)}_{rng.choice(NAMES)}"
        params = ", ".join(rng.sample(NAMES, k=rng.randint(1, 3)))
        body = []
        for _ in range(rng.randint(2, 6)):
            target, source = rng.choice(NAMES), rng.choice(NAMES)
            call = rng.choice(CALLS)
            body.append(
                rng.choice(
                    [
                        f"{target} = {call}({source})",
                        f"for {target} in {call}({source}):",
                        f"if {target} {rng.choice(['==', '!=', '<', '>=', 'is', 'in'])} {source}:",
                        f"{target}.{call}({source}, {rng.randint(0, 99)})",
                        f"return {target} + {source}",
                        f"{rng.choice(KEYWORDS)} {target}",
                    ]
                )
            )
        class_name = "".join(word.capitalize() for word in rng.sample(NAMES, k=rng.randint(2, 3)))
        comment = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 14))).capitalize()
        yield (
            f"class {class_name}:\n    # {comment}.\n    limit = {rng.randint(0, 9999)}\n\n"
            f"    def {name}({params}):\n" + "".join(f"{'    ' * rng.randint(2, 4)}{line}\n" for line in body)
        )


def build() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = list(sample_texts()) + list(code_like_texts(4000))
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return tokenizer


def main() -> None:
    # GPT-NeoX takes no token_type_ids, which PreTrainedTokenizerFast returns by default:
    # model.generate(**tokenizer(prompt, return_tensors="pt")) would refuse them.
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=build(), bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=PAD, model_max_length=2048,
        model_input_names=["input_ids", "attention_mask"],
    )
    wrapped.save_pretrained(OUTPUT)
    print(f"wrote {OUTPUT} (vocabulary {len(wrapped)})")


if __name__ == "__main__":
    main()
