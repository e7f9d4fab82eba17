"""Bad-data corpus, generated on the fly: every broken input gives a clear error (file:line, or the
file, with what was expected and what was found) or, under ``on_bad_record: skip``, an exact count;
``mft-train train`` refuses to start on corrupted data instead of training on it."""

from __future__ import annotations

import json
import random
import subprocess
import textwrap
from pathlib import Path

import pytest

from mft_trainer.config import from_dict
from mft_trainer.data import DataError, build_datasets, load_tokenizer
from mft_trainer.data.binary import LOSS_MASK, OFFSETS, TOKENS, preprocess
from mft_trainer.data.records import MAX_RECORD_BYTES
from tests.tokenizer_fixtures import gpt_neox_20b_dir

from tests.training_processes import PYTHON, REPO, TOKENIZER, child_env

from .support import chat_record, events, good_task, torchrun_command, trainer_config, write_config, write_jsonl

GOOD = {"chat_rounds": [{"role": "human", "content": "add two numbers"}, {"role": "bot", "content": "a + b"}]}


def config(paths: list[Path], tokenizer_dir: Path = TOKENIZER, **data):
    """An SST config (training loads the binary datasets below, which are preprocessed for SST)."""
    return from_dict({"mode": "sst", "model": {"config": {"x": 1}, "tokenizer_path": str(tokenizer_dir)},
                      "data": {"paths": [str(p) for p in paths], **data}, "training": {"seq_length": 64}})


@pytest.fixture(scope="module")
def tiny():
    return load_tokenizer(config([Path("/unused")]))


def load(paths: list[Path], tokenizer, **data):
    return build_datasets(config(paths, **data), tokenizer)


def refused(paths: list[Path], tokenizer, **data) -> str:
    with pytest.raises(DataError) as caught:
        load(paths, tokenizer, **data)
    return str(caught.value)


# Each bad line is line 3 of its file (two good records first); message = what the error must say.
BAD_LINES = {
    "invalid-json": (b'{"chat_rounds": [{"role": "human", "content": "x"}', "invalid JSON", "expected a JSON object, found invalid JSON"),
    "trailing-garbage": (json.dumps(GOOD).encode() + b" }", "invalid JSON", "found invalid JSON (Extra data"),
    "not-an-object": (b"[1, 2, 3]", "wrong type", "expected a JSON object, found list [1, 2, 3]"),
    "wrong-role": (json.dumps({"chat_rounds": [{"role": "human", "content": "q"}, {"role": "model", "content": "a"}]}).encode(),
                   "unknown role", "chat_rounds[1].role: expected system, human or bot (or user, assistant), found 'model'"),
    "role-not-string": (json.dumps({"chat_rounds": [{"role": 1, "content": "q"}]}).encode(), "wrong type",
                        "chat_rounds[0].role: expected a string, found number 1"),
    "missing-content": (json.dumps({"chat_rounds": [{"role": "human"}]}).encode(), "missing field",
                        "chat_rounds[0]: missing field 'content'"),
    "missing-answer": (json.dumps({"prompt": "q"}).encode(), "missing field", "missing field 'answer'"),
    "no-known-field": (json.dumps({"question": "q", "reply": "a"}).encode(), "missing field",
                       "expected a record with 'chat_rounds', 'prompt' and 'answer', or 'text', found fields ['question', 'reply']"),
    "empty-chat-rounds": (json.dumps({"chat_rounds": []}).encode(), "empty chat_rounds", "expected at least one turn"),
    "content-null": (json.dumps({"prompt": "q", "answer": None}).encode(), "wrong type", "answer: expected a string, found null"),
    "not-utf8": (b'{"text": "caf\xe9 \xff"}', "not UTF-8", "expected UTF-8 text, found byte 0xe9 at column 14"),
    "utf16": ('{"text": "x"}'.encode("utf-16"), "not UTF-8", "expected UTF-8 text, found byte 0xff at column 1"),
}


@pytest.mark.parametrize("kind", sorted(BAD_LINES))
def test_bad_record_fails_naming_file_and_line(tmp_path, tiny, kind):
    line, _, message = BAD_LINES[kind]
    path = write_jsonl(tmp_path / "task" / "part.jsonl", [GOOD, GOOD, line, GOOD])
    error = refused([path.parent], tiny)
    assert error.startswith(f"{path}:3: "), error
    assert message in error, f"expected {message!r} in {error!r}"


def test_skip_policy_counts_every_bad_record_exactly(tmp_path, tiny):
    """All the bad lines above, mixed with good ones in two files: exact per-file counts and reasons,
    the first occurrence of each reason named by file:line."""
    rng = random.Random(3)
    kinds = sorted(BAD_LINES)
    lines_a: list = []
    expected_a: dict[str, int] = {}
    for i, kind in enumerate(kinds):
        lines_a += [chat_record(rng), BAD_LINES[kind][0]]
        expected_a[BAD_LINES[kind][1]] = expected_a.get(BAD_LINES[kind][1], 0) + 1
    a = write_jsonl(tmp_path / "task" / "a.jsonl", lines_a)
    b = write_jsonl(tmp_path / "task" / "b.jsonl", [chat_record(rng) for _ in range(5)] + [b"{", b"", b"{"])
    report = load([a.parent], tiny, on_bad_record="skip").report
    files = {f.path: f for f in report.files}
    assert files[str(a)].records == len(kinds) and files[str(a)].skipped == len(kinds)
    assert files[str(a)].skip_reasons == expected_a
    assert files[str(a)].first_skips["invalid JSON"].startswith(f"{a}:{2 * kinds.index('invalid-json') + 2}: ")
    assert (files[str(b)].records, files[str(b)].skipped, files[str(b)].skip_reasons) == (5, 2, {"invalid JSON": 2})
    assert files[str(b)].first_skips["invalid JSON"].startswith(f"{b}:6: ")
    assert report.total("skipped") == len(kinds) + 2 and report.total("records") == len(kinds) + 5
    assert f"{len(kinds) + 2} skipped" in report.summary()


def test_empty_file_is_an_error_under_either_policy(tmp_path, tiny):
    task = good_task(tmp_path / "task")
    (task / "zz-empty.jsonl").write_bytes(b"")
    (task / "zz-blank.jsonl").write_bytes(b"\n  \n")
    for policy in ("fail", "skip"):
        error = refused([task], tiny, on_bad_record=policy)
        assert "empty file: expected JSON records, one per line, found none" in error and "zz-blank.jsonl" in error


def test_empty_folder_and_folder_without_jsonl_are_errors(tmp_path, tiny):
    empty = tmp_path / "empty-task"
    empty.mkdir()
    assert refused([good_task(tmp_path / "ok"), empty], tiny) == \
        f"{empty}: empty task folder: expected *.jsonl or *.jsonl.gz files, found no files"
    other = tmp_path / "csv-task"
    other.mkdir()
    (other / "data.csv").write_text("a,b\n")
    assert refused([other], tiny) == f"{other}: expected *.jsonl or *.jsonl.gz files, found only data.csv"
    missing = tmp_path / "nowhere"
    assert refused([missing], tiny) == f"{missing}: task folder does not exist"


def test_duplicate_task_names_are_refused(tmp_path, tiny):
    first = good_task(tmp_path / "team-a" / "code")
    second = good_task(tmp_path / "team-b" / "code", seed=1)
    error = refused([first, second], tiny)
    assert error.startswith(f"{second}: duplicate task name 'code' (also {first})"), error


# ---------------------------------------------------------------- a 50 MB line

MEASURE = textwrap.dedent("""
    import json, resource, sys
    from mft_trainer.config import from_dict
    from mft_trainer.data import DataError, build_datasets, load_tokenizer
    policy, folder, tokenizer = sys.argv[1:]
    cfg = from_dict({"mode": "sst", "model": {"config": {"x": 1}, "tokenizer_path": tokenizer},
                     "data": {"paths": [folder], "on_bad_record": policy}, "training": {"seq_length": 64}})
    tok = load_tokenizer(cfg)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        result = {"report": build_datasets(cfg, tok).report.to_dict()}
    except DataError as exc:
        result = {"error": str(exc)}
    result["before_kib"] = before
    result["self_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result["children_kib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps(result))
""")
HUGE_BYTES = 50_000_000
# Peak resident memory allowed for the whole load, in the process and its tokenizer workers (about
# 0.7 GiB of that is torch and transformers); before the record size limit, tokenizing this one line
# took 6.6 GB in a tokenizer worker.
MEMORY_BUDGET_KIB = 1536 * 1024


@pytest.fixture(scope="module")
def huge_task(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("huge") / "huge-task"
    rng = random.Random(0)
    block = " ".join(rng.choice(["def", "return", "x", "=", "+", "(", ")", "for", "in"]) for _ in range(20000))
    text = (block * (HUGE_BYTES // len(block) + 1))[:HUGE_BYTES]
    write_jsonl(folder / "big.jsonl", [{"text": "small one"}, {"text": text}, {"text": "small two"}])
    return folder, len(json.dumps({"text": text}).encode()) + 1  # the line, newline included


@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_fifty_megabyte_line_is_handled_by_policy_within_memory(huge_task, policy):
    huge_task, _ = huge_task
    proc = subprocess.run([PYTHON, "-c", MEASURE, policy, str(huge_task), str(TOKENIZER)], env=child_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    path = huge_task / "big.jsonl"
    if policy == "fail":
        # The line is read only up to the limit: its length beyond that is never known, nor needed.
        assert result["error"] == (f"{path}:2: expected a record of at most {MAX_RECORD_BYTES} bytes, found a "
                                   f"longer one; split long documents into several records"), result
    else:
        (counts,) = result["report"]["tasks"][0]["files"]
        assert (counts["records"], counts["skipped"], counts["skip_reasons"]) == (2, 1, {"record too large": 1})
        assert counts["first_skips"]["record too large"].startswith(f"{path}:2: ")
    peak = max(result["self_kib"], result["children_kib"])
    assert peak < MEMORY_BUDGET_KIB, f"reading a {HUGE_BYTES} byte line took a peak of {peak // 1024} MiB"
    print(f"50 MB line, policy {policy}: peak {peak // 1024} MiB (after imports: {result['before_kib'] // 1024} MiB)")


# ---------------------------------------------------------------- binary datasets


@pytest.fixture(scope="module")
def binary_tasks(tmp_path_factory, tiny):
    """One JSONL task preprocessed with the tiny tokenizer, and the same with GPT-NeoX-20B's."""
    root = tmp_path_factory.mktemp("bin")
    source = good_task(root / "jsonl" / "code", count=30)
    neox_dir = gpt_neox_20b_dir()
    neox_config = config([source], neox_dir)
    preprocess(config([source]), tiny, [str(source)], root / "tiny", 64, 1)
    preprocess(neox_config, load_tokenizer(neox_config), [str(source)], root / "neox", 64, 1)
    return root


def damaged_copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for path in src.iterdir():
        (dst / path.name).write_bytes(path.read_bytes())
    return dst


def test_binary_dataset_from_another_tokenizer_is_refused(binary_tasks, tiny):
    error = refused([binary_tasks / "neox" / "code"], tiny, format="bin")
    assert error.startswith(f"{binary_tasks / 'neox' / 'code'}: made with another tokenizer: dataset tokenizer hash "
                            f"sha256:"), error
    assert "run mft-train preprocess again with the training tokenizer" in error
    assert len(load([binary_tasks / "tiny" / "code"], tiny, format="bin").train) > 0  # the right one loads


@pytest.mark.parametrize("file,keep", [(TOKENS, 0.5), (TOKENS, 0.0), (OFFSETS, 0.9)])
def test_truncated_binary_dataset_is_refused(binary_tasks, tiny, tmp_path, file, keep):
    task = damaged_copy(binary_tasks / "tiny" / "code", tmp_path / "code")
    size = (task / file).stat().st_size
    with open(task / file, "r+b") as f:
        f.truncate(int(size * keep))
    error = refused([task], tiny, format="bin")
    assert error.startswith(f"{task / file}: truncated or corrupt: expected {size} bytes"), error
    assert f"found {int(size * keep)} bytes" in error


def test_damaged_manifest_and_missing_files_are_refused(binary_tasks, tiny, tmp_path):
    task = damaged_copy(binary_tasks / "tiny" / "code", tmp_path / "code")
    manifest = task / "manifest.json"
    text = manifest.read_text()
    manifest.write_text(text[: len(text) // 2])
    assert refused([task], tiny, format="bin").startswith(f"{manifest}: expected a JSON manifest")
    manifest.unlink()
    assert "expected a preprocessed task folder with manifest.json" in refused([task], tiny, format="bin")
    task2 = damaged_copy(binary_tasks / "tiny" / "code", tmp_path / "code2")
    (task2 / TOKENS).unlink()
    assert refused([task2], tiny, format="bin").endswith("found missing")


def test_corrupt_document_index_is_refused(binary_tasks, tiny, tmp_path):
    import numpy as np

    task = damaged_copy(binary_tasks / "tiny" / "code", tmp_path / "code")
    offsets = np.fromfile(task / OFFSETS, dtype=np.int64)
    offsets[3], offsets[4] = offsets[4], offsets[3]  # same size, no longer rising
    offsets.tofile(task / OFFSETS)
    assert "corrupt document index" in refused([task], tiny, format="bin")


def damage_ids(task: Path, documents: list[int], token_id: int = 65000) -> None:
    """Overwrite the first token id of each of ``documents`` (same size: the manifest still agrees)."""
    import numpy as np

    dtype = np.dtype(json.loads((task / "manifest.json").read_text())["token_dtype"])
    tokens, offsets = np.fromfile(task / TOKENS, dtype=dtype), np.fromfile(task / OFFSETS, dtype=np.int64)
    tokens[offsets[documents]] = token_id
    tokens.tofile(task / TOKENS)


def widen_ids(task: Path) -> None:
    """Store the ids as int32, as preprocess does for vocabularies over 65536."""
    import numpy as np

    np.fromfile(task / TOKENS, dtype=np.uint16).astype(np.int32).tofile(task / TOKENS)
    manifest = json.loads((task / "manifest.json").read_text())
    (task / "manifest.json").write_text(json.dumps(manifest | {"token_dtype": "int32"}))


def read_every_row(datasets) -> None:
    """Read every row of both splits, as training and evaluation will."""
    for split in (datasets.train, datasets.valid):
        for index in range(len(split)):
            split[index]


@pytest.mark.parametrize("dtype,token_id", [("uint16", 65000), ("int32", -7)])
def test_a_token_id_outside_the_vocabulary_is_refused_where_a_row_reads_it(binary_tasks, tiny, tmp_path, dtype, token_id):
    task = damaged_copy(binary_tasks / "tiny" / "code", tmp_path / "code")
    if dtype == "int32":  # where damage can read as a negative id
        widen_ids(task)
    damage_ids(task, [7], token_id)
    datasets = load([task], tiny, format="bin")  # loading reads no token
    with pytest.raises(DataError) as caught:
        read_every_row(datasets)
    assert str(caught.value) == (f"{task / TOKENS}: document 7 holds token id {token_id}, but the tokenizer has "
                                 f"{len(tiny)} ids: the file is damaged; run mft-train preprocess again")


@pytest.mark.parametrize("value", [2, 255])
def test_a_loss_mask_value_other_than_0_or_1_is_refused_where_a_row_reads_it(binary_tasks, tiny, tmp_path, value):
    import numpy as np

    task = damaged_copy(binary_tasks / "tiny" / "code", tmp_path / "code")
    mask, offsets = np.fromfile(task / LOSS_MASK, dtype=np.uint8), np.fromfile(task / OFFSETS, dtype=np.int64)
    mask[offsets[11] + 2] = value  # same size: the manifest still agrees
    mask.tofile(task / LOSS_MASK)
    datasets = load([task], tiny, format="bin")
    with pytest.raises(DataError) as caught:
        read_every_row(datasets)
    assert str(caught.value) == (f"{task / LOSS_MASK}: document 11 holds loss mask value {value}, but a loss mask is "
                                 f"0 or 1: the file is damaged; run mft-train preprocess again")


# ---------------------------------------------------------------- end to end: training refuses to start


def run_train(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=child_env(), cwd=REPO, capture_output=True, text=True, timeout=300)


def assert_refused(proc: subprocess.CompletedProcess, mount: Path, message: str) -> None:
    assert proc.returncode != 0, f"training started on corrupted data:\n{proc.stderr[-3000:]}"
    assert message in proc.stderr, f"expected {message!r} on stderr:\n{proc.stderr[-3000:]}"
    assert events(proc.stdout, "mft.progress") == [], "a training step ran"
    assert not list(mount.glob("checkpoint-*")), "a checkpoint was written"


def test_train_refuses_to_start_on_a_bad_record(tmp_path):
    task = good_task(tmp_path / "data" / "code")
    with open(task / "part-000.jsonl", "ab") as f:
        f.write(b'{"chat_rounds": [{"role": "human", "content": "unterminated}\n')
    cfg = write_config(tmp_path / "cfg.yaml", trainer_config(tmp_path / "ckpt", [task]))
    proc = run_train([PYTHON, "-m", "mft_trainer", "train", "--config", str(cfg)], tmp_path)
    assert_refused(proc, tmp_path / "ckpt", f"{task / 'part-000.jsonl'}:41: expected a JSON object, found invalid JSON")


def test_train_stops_before_a_step_on_token_ids_beyond_the_vocabulary(binary_tasks, tmp_path):
    task = damaged_copy(binary_tasks / "tiny" / "code", tmp_path / "code")
    damage_ids(task, list(range(30)))
    cfg = write_config(tmp_path / "cfg.yaml", trainer_config(tmp_path / "ckpt", [task], data__format="bin"))
    proc = run_train([PYTHON, "-m", "mft_trainer", "train", "--config", str(cfg)], tmp_path)
    assert_refused(proc, tmp_path / "ckpt", "holds token id 65000, but the tokenizer has")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_train_under_torchrun_refuses_a_truncated_binary_dataset(binary_tasks, tmp_path):
    task = damaged_copy(binary_tasks / "tiny" / "code", tmp_path / "code")
    with open(task / TOKENS, "r+b") as f:
        f.truncate(10)
    raw = trainer_config(tmp_path / "ckpt", [task], data__format="bin")
    cfg = write_config(tmp_path / "cfg.yaml", raw)
    proc = run_train(torchrun_command(2, cfg), tmp_path)
    assert_refused(proc, tmp_path / "ckpt", f"{task / TOKENS}: truncated or corrupt")
