"""build_datasets end to end: tasks, split, over-long policy, modes, report, parallel tokenization."""

import numpy as np
import pytest
from data_fixtures import EXAMPLES, chat, make_config, write_jsonl
from mft_trainer.data import DataError, build_datasets, encoding
from mft_trainer.data.assembly import AssemblyStyle
from mft_trainer.data.encoding import Encoder, encode_files

TASKS = [EXAMPLES / "code-helper", EXAMPLES / "code-exam", EXAMPLES / "code-text"]


def rows(dataset):
    return [dataset[i] for i in range(len(dataset))]


def valid_documents(datasets):
    return [part.view.ids.tolist() for part in datasets.valid.parts]


def test_sample_data_with_both_tokenizers(tokenizer_dir, tokenizer):
    datasets = build_datasets(make_config(tokenizer_dir, TASKS, seq_length=256), tokenizer)
    assert datasets.tasks == ["code-helper", "code-exam", "code-text"]
    report = datasets.report
    assert [(t.train_documents + t.valid_documents) for t in report.tasks] == [160, 160, 100]
    assert report.total("skipped") == report.total("truncated") == report.total("dropped") == 0
    assert [t.valid_documents for t in report.tasks] == [8, 8, 5]  # round(5%)
    for dataset, name in ((datasets.train, "train"), (datasets.valid, "valid")):
        lengths = [len(r["input_ids"]) for r in rows(dataset)]
        assert max(lengths) <= 256
        assert sum(lengths) == sum(getattr(t, f"{name}_tokens") for t in report.tasks)
        assert dataset.row_lengths().tolist() == lengths
        assert [dataset.task_of(i) for i in range(len(dataset))] == [r["task_id"] for r in rows(dataset)]
        assert sorted(set(r["task_id"] for r in rows(dataset))) == [0, 1, 2]


def test_split_is_seeded_and_per_task(tiny_dir, tiny_tokenizer):
    # Long enough for every sample document: truncation drops none (see test_truncate_*).
    first = build_datasets(make_config(tiny_dir, TASKS, seq_length=2048), tiny_tokenizer)
    again = build_datasets(make_config(tiny_dir, TASKS, seq_length=4096), tiny_tokenizer)
    alone = build_datasets(make_config(tiny_dir, TASKS[1:2], seq_length=2048), tiny_tokenizer)
    other_seed = build_datasets(make_config(tiny_dir, TASKS, seq_length=2048, seed=7), tiny_tokenizer)
    assert valid_documents(first) == valid_documents(again)
    assert valid_documents(alone) == valid_documents(first)[1:2]  # other tasks do not move it
    assert valid_documents(other_seed) != valid_documents(first)
    for part_train, part_valid in zip(first.train.parts, first.valid.parts):
        assert not set(part_train.view.ids.tolist()) & set(part_valid.view.ids.tolist())


def test_tiny_tasks_still_get_a_valid_document(tmp_path, tiny_dir, tiny_tokenizer):
    write_jsonl(tmp_path / "one" / "a.jsonl", [{"text": "a"}])
    write_jsonl(tmp_path / "two" / "a.jsonl", [{"text": "a"}, {"text": "b"}])
    report = build_datasets(make_config(tiny_dir, [tmp_path / "one", tmp_path / "two"]), tiny_tokenizer).report
    assert [(t.train_documents, t.valid_documents) for t in report.tasks] == [(1, 0), (1, 1)]


@pytest.fixture
def long_and_short(tmp_path):
    task = tmp_path / "mixed"
    write_jsonl(task / "a.jsonl", [chat(("human", "q " * 50), ("bot", "a " * 50)), {"text": "short"}] * 10)
    write_jsonl(task / "b.jsonl", [{"text": "tiny"}] * 10)
    return task


def test_truncate_is_counted_per_file(tmp_path, tiny_dir, tiny_tokenizer):
    task = tmp_path / "mixed"
    write_jsonl(task / "a.jsonl", [chat(("human", "q"), ("bot", "a " * 50)), {"text": "short"}] * 10)
    write_jsonl(task / "b.jsonl", [{"text": "tiny"}] * 10)
    datasets = build_datasets(make_config(tiny_dir, [task], seq_length=32, padding_mode="padding"), tiny_tokenizer)
    a, b = datasets.report.files
    assert (a.truncated, b.truncated, a.dropped, a.truncated_without_targets) == (10, 0, 0, 0)
    lengths = [len(r["input_ids"]) for r in rows(datasets.train) + rows(datasets.valid)]
    assert len(lengths) == 30 and lengths.count(32) == 10
    assert "10 truncated" in datasets.report.summary()


def test_truncation_that_cuts_off_every_target_drops_the_document_and_says_so(long_and_short, tiny_dir,
                                                                               tiny_tokenizer):
    # The long chats' answers start beyond 32 tokens: truncated, nothing would be learned from them.
    datasets = build_datasets(
        make_config(tiny_dir, [long_and_short], seq_length=32, padding_mode="padding"), tiny_tokenizer
    )
    a, b = datasets.report.files
    assert (a.truncated, a.truncated_without_targets, b.truncated_without_targets) == (10, 10, 0)
    assert len(rows(datasets.train) + rows(datasets.valid)) == 20
    assert all(any(label != -100 for label in r["labels"]) for r in rows(datasets.train) + rows(datasets.valid))
    assert "10 truncated (10 of them without targets, dropped)" in datasets.report.summary()


def test_drop_is_counted_per_file(long_and_short, tiny_dir, tiny_tokenizer):
    datasets = build_datasets(
        make_config(tiny_dir, [long_and_short], seq_length=32, overlong_policy="drop"), tiny_tokenizer
    )
    a, b = datasets.report.files
    assert (a.dropped, b.dropped, a.truncated) == (10, 0, 0)
    task = datasets.report.tasks[0]
    assert task.train_documents + task.valid_documents == 20


def test_padding_mode_is_one_document_per_row(tiny_dir, tiny_tokenizer):
    datasets = build_datasets(make_config(tiny_dir, TASKS, seq_length=512, padding_mode="padding"), tiny_tokenizer)
    assert len(datasets.train) == sum(t.train_documents for t in datasets.report.tasks)
    assert all(r["sample_index"].max() == 0 for r in rows(datasets.train))


def test_pack_fills_rows(tiny_dir, tiny_tokenizer):
    datasets = build_datasets(make_config(tiny_dir, TASKS, seq_length=512), tiny_tokenizer)
    lengths = datasets.train.row_lengths()
    assert lengths.sum() / (len(lengths) * 512) > 0.85


def test_concat_needs_sst(tiny_dir, tiny_tokenizer):
    with pytest.raises(DataError, match="data.padding_mode: concat is only allowed with mode sst, found mode sft"):
        build_datasets(make_config(tiny_dir, TASKS, padding_mode="concat"), tiny_tokenizer)
    datasets = build_datasets(
        make_config(tiny_dir, TASKS, mode="sst", padding_mode="concat", seq_length=100), tiny_tokenizer
    )
    train = rows(datasets.train)
    assert all(len(r["input_ids"]) <= 100 and (r["labels"] != -100).all() for r in train)
    assert sum(len(r["input_ids"]) for r in train) == sum(t.train_tokens - 1 for t in datasets.report.tasks)


def test_parallel_tokenization_matches_one_process(tmp_path, monkeypatch, tiny_tokenizer):
    path = write_jsonl(tmp_path / "a.jsonl", [chat(("human", f"q{i}"), ("bot", "a " * (i % 7))) for i in range(300)])
    monkeypatch.setattr(encoding, "CHUNK_BYTES", 1000)
    encoder = Encoder(tiny_tokenizer, AssemblyStyle())
    one = list(encode_files([path, path], encoder, "fail", workers=1))
    two = list(encode_files([path, path], encoder, "fail", workers=2))
    assert len(one) > 10
    for a, b in zip(one, two, strict=True):
        assert a.file_index == b.file_index
        assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.loss_mask, b.loss_mask)
        assert np.array_equal(a.lengths, b.lengths)


def test_parallel_tokenization_reports_the_first_bad_line(tmp_path, monkeypatch, tiny_tokenizer):
    good = chat(("human", "q"), ("bot", "a"))
    path = write_jsonl(tmp_path / "a.jsonl", [good] * 200 + ['{"text": 1}'] + [good] * 200 + ["{"])
    monkeypatch.setattr(encoding, "CHUNK_BYTES", 1000)
    with pytest.raises(DataError, match=r"a\.jsonl:201: text: expected a string, found number 1"):
        list(encode_files([path], Encoder(tiny_tokenizer, AssemblyStyle()), "fail", workers=2))
