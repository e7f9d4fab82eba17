"""Generate the sample multi-task data set in MFTCoder's JSONL format.

Three task folders, one record kind each:
  code-helper/  chat_rounds (system/human/bot, some two-round conversations), split over two files
  code-exam/    prompt/answer, answers computed by evaluating the question's expression
  code-text/    text records (small Python modules), for self-supervised training

The records are templated on purpose: a tiny model must be able to learn them within a hundred steps,
so a falling loss in the demo and in trainer tests means the pipeline works, not that the model is good.

Run `python examples/data/generate.py` to rewrite the files; the output depends only on SEED.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 20240601
HERE = Path(__file__).resolve().parent

SYSTEM_PROMPT = "You are a helpful Python coding assistant. Answer with short, correct code."

# (function name, what it computes, return expression over `values`)
LIST_FUNCTIONS = [
    ("total", "sum", "sum(values)"),
    ("largest", "largest value", "max(values)"),
    ("smallest", "smallest value", "min(values)"),
    ("count_items", "number of items", "len(values)"),
    ("average", "average", "sum(values) / len(values)"),
    ("sorted_copy", "values in ascending order", "sorted(values)"),
    ("reversed_copy", "values in reverse order", "list(reversed(values))"),
    ("evens", "even values", "[v for v in values if v % 2 == 0]"),
    ("odds", "odd values", "[v for v in values if v % 2 == 1]"),
    ("squares", "squares of the values", "[v * v for v in values]"),
    ("doubled", "values multiplied by two", "[v * 2 for v in values]"),
    ("positives", "values greater than zero", "[v for v in values if v > 0]"),
    ("unique", "distinct values in order", "list(dict.fromkeys(values))"),
    ("first_item", "first value", "values[0]"),
    ("last_item", "last value", "values[-1]"),
    ("value_range", "difference between the largest and smallest value", "max(values) - min(values)"),
]

PHRASINGS = [
    "Write a Python function `{name}` that returns the {what} of a list of numbers.",
    "Please write `{name}(values)` in Python: it should return the {what} of `values`.",
    "How do I write a Python function named `{name}` returning the {what} of a list?",
    "I need a function `{name}` that gives the {what} of a list of numbers. Can you write it?",
]

EXAM_TEMPLATES = [
    "len({a})",
    "sum({a})",
    "max({a})",
    "min({a})",
    "sorted({a})",
    "{a}[0]",
    "{a}[-1]",
    "{a} + {b}",
    "{x} + {y}",
    "{x} * {y}",
    "{x} // {y}",
    "{x} % {y}",
    "{x} ** 2",
    "abs(-{x})",
    "str({x}) + str({y})",
    "len('{word}')",
    "'{word}'.upper()",
    "'{word}'[::-1]",
]

EXAM_PHRASINGS = [
    "What does `{expr}` evaluate to in Python?",
    "In Python, what is the value of `{expr}`?",
    "What is the result of the Python expression `{expr}`?",
]

EXAM_BUILTINS = {f.__name__: f for f in (len, sum, max, min, sorted, abs, str)}

WORDS = ["code", "data", "list", "python", "model", "token", "task", "loop", "value", "tree"]


def code_helper_record(rng: random.Random) -> dict:
    name, what, expr = rng.choice(LIST_FUNCTIONS)
    question = rng.choice(PHRASINGS).format(name=name, what=what)
    code = f"```python\ndef {name}(values):\n    return {expr}\n```"
    rounds = []
    if rng.random() < 0.7:
        rounds.append({"role": "system", "content": SYSTEM_PROMPT})
    rounds += [{"role": "human", "content": question}, {"role": "bot", "content": code}]
    if rng.random() < 0.3:
        documented = f'```python\ndef {name}(values):\n    """Return the {what} of values."""\n    return {expr}\n```'
        rounds += [{"role": "human", "content": "Now add a docstring."}, {"role": "bot", "content": documented}]
    return {"chat_rounds": rounds}


def random_numbers(rng: random.Random) -> list[int]:
    return [rng.randint(0, 9) for _ in range(rng.randint(2, 5))]


def code_exam_record(rng: random.Random) -> dict:
    expr = rng.choice(EXAM_TEMPLATES).format(
        a=random_numbers(rng), b=random_numbers(rng), x=rng.randint(2, 20), y=rng.randint(2, 9), word=rng.choice(WORDS)
    )
    value = eval(expr, {"__builtins__": EXAM_BUILTINS})  # our own templates, evaluated to get the answer
    record = {
        "prompt": rng.choice(EXAM_PHRASINGS).format(expr=expr),
        "answer": f"`{expr}` evaluates to `{value!r}`.",
    }
    if rng.random() < 0.5:
        record["system"] = SYSTEM_PROMPT
    return record


def code_text_record(rng: random.Random) -> dict:
    chosen = rng.sample(LIST_FUNCTIONS, k=rng.randint(2, 4))
    functions = [
        f'def {name}(values):\n    """Return the {what} of values."""\n    return {expr}\n'
        for name, what, expr in chosen
    ]
    example = f"values = {[rng.randint(0, 9) for _ in range(4)]}\nprint({chosen[0][0]}(values))\n"
    return {"text": "\n\n".join(functions) + "\n\n" + example}


# folder -> [(file name, record maker, count)]
LAYOUT = {
    "code-helper": [("part-000.jsonl", code_helper_record, 90), ("part-001.jsonl", code_helper_record, 70)],
    "code-exam": [("exam.jsonl", code_exam_record, 160)],
    "code-text": [("modules.jsonl", code_text_record, 100)],
}


def write(folder: Path) -> None:
    rng = random.Random(SEED)
    for task, files in LAYOUT.items():
        (folder / task).mkdir(parents=True, exist_ok=True)
        for file_name, make_record, count in files:
            lines = [json.dumps(make_record(rng), ensure_ascii=False) for _ in range(count)]
            (folder / task / file_name).write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    write(HERE)
