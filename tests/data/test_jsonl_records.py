"""Records: the three kinds, aliases, and an error naming file:line, what was expected and what was found."""

import gzip
import zlib

import pytest
from data_fixtures import chat, make_config, write_jsonl
from mft_trainer.data import DataError, build_datasets
from mft_trainer.data.records import RecordError, Turn, parse_record, read_line_chunks


def test_chat_rounds_with_aliases():
    line = b'{"chat_rounds": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "id": 7}'
    assert parse_record(line) == [Turn("human", "q"), Turn("bot", "a")]


def test_prompt_answer_with_and_without_system():
    assert parse_record(b'{"prompt": "q", "answer": "a", "system": "s"}') == [
        Turn("system", "s"),
        Turn("human", "q"),
        Turn("bot", "a"),
    ]
    assert parse_record(b'{"prompt": "q", "answer": "a"}') == [Turn("human", "q"), Turn("bot", "a")]


def test_text_record():
    assert parse_record('{"text": "héllo"}'.encode()) == [Turn("text", "héllo")]


@pytest.mark.parametrize(
    ("line", "reason", "message"),
    [
        (b'{"text": ', "invalid JSON", "expected a JSON object, found invalid JSON (Expecting value at column 10)"),
        (b"[1, 2]", "wrong type", "expected a JSON object, found list [1, 2]"),
        (b'{"text": 5}', "wrong type", "text: expected a string, found number 5"),
        (b'{"prompt": "q"}', "missing field", "missing field 'answer'"),
        (
            b'{"meta": 1}',
            "missing field",
            "expected a record with 'chat_rounds', 'prompt' and 'answer', or 'text', found fields ['meta']",
        ),
        (b'{"chat_rounds": []}', "empty chat_rounds", "chat_rounds: expected at least one turn, found an empty list"),
        (b'{"chat_rounds": {"role": "bot"}}', "wrong type", "chat_rounds: expected a list of turns, found object"),
        (
            b'{"chat_rounds": [{"role": "bot"}]}',
            "missing field",
            "chat_rounds[0]: missing field 'content', found fields ['role']",
        ),
        (
            b'{"chat_rounds": [{"role": "bot", "content": null}]}',
            "wrong type",
            "chat_rounds[0].content: expected a string, found null",
        ),
        (
            b'{"chat_rounds": [{"role": "human", "content": "q"}, {"role": "robot", "content": "a"}]}',
            "unknown role",
            "chat_rounds[1].role: expected system, human or bot (or user, assistant), found 'robot'",
        ),
        (b'{"text": "caf\xe9"}', "not UTF-8", "expected UTF-8 text, found byte 0xe9 at column 14"),
        (
            b'{"chat_rounds": [{"role": "bot", "content": "x\\ud83d"}]}',
            "invalid Unicode",
            "chat_rounds[0].content: expected Unicode text, found a lone surrogate \\ud83d at character 2",
        ),
        (b"[" * 100_000 + b"]" * 100_000, "invalid JSON", "found JSON that cannot be read (maximum recursion depth"),
        (b'{"text": ' + b"1" * 5000 + b"}", "invalid JSON", "found JSON that cannot be read (Exceeds the limit"),
        (b'{"text": "' + b"x" * (4 << 20) + b'"}', "record too large", "expected a record of at most 4194304 bytes"),
        (b'{"text": "a", "text": "b"}', "duplicate field", "expected each field of an object once, found 'text' twice"),
        (
            b'{"chat_rounds": [{"role": "bot", "content": "a", "content": ""}]}',
            "duplicate field",
            "found 'content' twice",
        ),
    ],
)
def test_bad_records(line, reason, message):
    with pytest.raises(RecordError) as caught:
        parse_record(line)
    assert caught.value.reason == reason
    assert message in str(caught.value)


def test_error_names_file_and_line(tmp_path, tiny_dir, tiny_tokenizer):
    task = tmp_path / "qa"
    write_jsonl(task / "a.jsonl", [chat(("human", "q"), ("bot", "a")), "", '{"prompt": "q", "answer": 3}'])
    with pytest.raises(DataError, match=r"qa/a\.jsonl:3: answer: expected a string, found number 3$"):
        build_datasets(make_config(tiny_dir, [task]), tiny_tokenizer)


def test_skip_policy_counts_per_file_with_reasons(tmp_path, tiny_dir, tiny_tokenizer):
    task = tmp_path / "qa"
    good = chat(("human", "q"), ("bot", "a"))
    write_jsonl(task / "a.jsonl", [good, "{oops", good, '{"chat_rounds": [{"role": "x", "content": ""}]}', "{bad"])
    write_jsonl(task / "b.jsonl.gz", [good, b"\xff\xfe"])
    datasets = build_datasets(make_config(tiny_dir, [task], on_bad_record="skip"), tiny_tokenizer)
    a, b = datasets.report.files
    assert (a.records, a.skipped, a.skip_reasons) == (2, 3, {"invalid JSON": 2, "unknown role": 1})
    assert a.first_skips["invalid JSON"].startswith(f"{task / 'a.jsonl'}:2: ")
    assert (b.records, b.skipped, b.skip_reasons) == (1, 1, {"not UTF-8": 1})
    summary = datasets.report.summary()
    assert "3 records, 4 skipped" in summary
    assert "2 invalid JSON, first at " in summary


def test_gzip_and_blank_lines_keep_line_numbers(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl.gz", ['{"text": "a"}', "", '{"text": "b"}'])
    (chunk,) = read_line_chunks(path, 0)
    assert chunk.first_line == 1 and len(chunk.lines) == 3


def test_chunks_cover_every_line_in_order(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "x" * 40} for _ in range(100)])
    chunks = list(read_line_chunks(path, 0, chunk_bytes=200))
    assert len(chunks) > 10
    assert [c.first_line for c in chunks] == [1 + sum(len(c.lines) for c in chunks[:i]) for i in range(len(chunks))]
    assert sum(len(c.lines) for c in chunks) == 100


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_empty_file_is_an_error(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=r"empty\.jsonl: empty file: expected JSON records, one per line, found none"):
        list(read_line_chunks(path, 0))


def test_damaged_gzip_is_an_error(tmp_path):
    path = tmp_path / "t.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"text": "a"}\n' * 100)[:40])
    with pytest.raises(DataError, match=r"t\.jsonl\.gz: cannot read the file"):
        list(read_line_chunks(path, 0))


def test_a_damaged_deflate_stream_names_the_file_and_the_line_reached(tmp_path, tiny_dir, tiny_tokenizer):
    """gzip passes zlib's own error through for a damaged stream (a CRC mismatch or a cut-off file
    come as OSError and EOFError instead)."""
    good = b"".join(b'{"text": "record %d %s"}\n' % (i, b"abc def " * (i % 13)) for i in range(2000))
    compressed = gzip.compress(good, mtime=0)
    path = tmp_path / "qa" / "t.jsonl.gz"
    path.parent.mkdir()
    for offset in range(10, len(compressed)):  # past the header: the first byte whose damage zlib notices
        damaged = bytearray(compressed)
        damaged[offset] ^= 0xFF
        path.write_bytes(damaged)
        lines, error = _read_until_error(path)
        if isinstance(error, zlib.error) and lines:
            break
    else:
        pytest.fail("no damaged byte makes zlib fail after the first line")
    expected = f"{path}: cannot read the file after line {lines}: damaged compressed data ({error})"
    with pytest.raises(DataError) as caught:
        list(read_line_chunks(path, 0))
    assert str(caught.value) == expected
    with pytest.raises(DataError) as caught:
        build_datasets(make_config(tiny_dir, [path.parent], on_bad_record="skip"), tiny_tokenizer)
    assert str(caught.value) == expected


def _read_until_error(path):
    lines = 0
    try:
        with gzip.open(path, "rb") as stream:
            for _ in stream:
                lines += 1
    except Exception as exc:
        return lines, exc
    return lines, None


def test_a_record_without_targets_is_a_bad_record(tmp_path, tiny_dir, tiny_tokenizer):
    task = tmp_path / "qa"
    good, no_bot = chat(("human", "q"), ("bot", "a")), chat(("system", "s"), ("human", "q"))
    write_jsonl(task / "a.jsonl", [good, no_bot, good])
    with pytest.raises(DataError, match=r"qa/a\.jsonl:2: expected something to learn from \(a bot turn, or text\), "
                                        r"found a record without target tokens$"):
        build_datasets(make_config(tiny_dir, [task]), tiny_tokenizer)
    (counts,) = build_datasets(make_config(tiny_dir, [task], on_bad_record="skip"), tiny_tokenizer).report.files
    assert (counts.records, counts.skip_reasons) == (2, {"no targets": 1})


def test_a_byte_order_mark_on_the_first_line_is_not_data(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "a"}\n{"text": "b"}\n')
    (chunk,) = read_line_chunks(path, 0)
    assert [parse_record(line) for line in chunk.lines] == [[Turn("text", "a")], [Turn("text", "b")]]


def test_a_huge_line_is_read_only_up_to_the_limit(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'{"text": "' + b"x" * (9 << 20) + b'"}\n{"text": "b"}\n')
    lines = [line for chunk in read_line_chunks(path, 0) for line in chunk.lines]
    assert [len(line) for line in lines] == [(4 << 20) + 2, len(b'{"text": "b"}\n')]


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n", b""])
def test_a_record_of_exactly_the_limit_is_read(tmp_path, line_end):
    record = b'{"text": "' + b"x" * ((4 << 20) - 12) + b'"}'
    assert len(record) == 4 << 20
    path = tmp_path / "t.jsonl"
    path.write_bytes(record + line_end)
    (line,) = [line for chunk in read_line_chunks(path, 0) for line in chunk.lines]
    assert parse_record(line) == [Turn("text", "x" * ((4 << 20) - 12))]
    with pytest.raises(RecordError, match="at most 4194304 bytes"):
        parse_record(b" " + line)


def test_a_task_left_without_documents_is_an_error(tmp_path, tiny_dir, tiny_tokenizer):
    good, bad = tmp_path / "good", tmp_path / "bad"
    write_jsonl(good / "a.jsonl", [chat(("human", "q"), ("bot", "a"))] * 3)
    write_jsonl(bad / "a.jsonl", ["{oops", "{oops"])
    with pytest.raises(DataError, match=r"task bad: no documents left to train on \(0 records read, 2 skipped as bad"):
        build_datasets(make_config(tiny_dir, [good, bad], on_bad_record="skip"), tiny_tokenizer)


def test_other_files_in_a_task_folder_are_named_in_a_warning(tmp_path, tiny_dir, tiny_tokenizer, caplog):
    task = tmp_path / "qa"
    write_jsonl(task / "a.jsonl", [chat(("human", "q"), ("bot", "a"))] * 2)
    write_jsonl(task / "b.JSONL", [chat(("human", "q"), ("bot", "a"))])
    (task / "notes.json").write_text("{}")
    (task / "old").mkdir()
    datasets = build_datasets(make_config(tiny_dir, [task]), tiny_tokenizer)
    assert [f.path for f in datasets.report.files] == [str(task / "a.jsonl"), str(task / "b.JSONL")]
    assert "ignoring notes.json, old/ (only *.jsonl and *.jsonl.gz files are data)" in caplog.text



def test_a_dead_worker_is_blamed_for_its_unfinished_chunk_not_one_it_finished():
    """A worker's claim stays on a chunk it finished; the chunk it died on is the unfinished one."""
    import signal
    from collections import deque
    from concurrent.futures import Future
    from types import SimpleNamespace

    from mft_trainer.data.encoding import _Lines, _WorkerPool

    pool = _WorkerPool.__new__(_WorkerPool)
    pool._executor = SimpleNamespace(shutdown=lambda wait: None)
    pool._processes = [SimpleNamespace(pid=41, exitcode=-signal.SIGKILL), SimpleNamespace(pid=42, exitcode=-signal.SIGTERM)]
    pool._claims = [41, 41, 42, 0]
    finished, broken, other = Future(), Future(), Future()
    finished.set_result("encoded")
    broken.set_exception(RuntimeError("pool broken"))
    other.set_exception(RuntimeError("pool broken"))
    pending = deque([(0, _Lines("a.jsonl", 1, 10), finished), (1, _Lines("a.jsonl", 11, 20), broken),
                     (2, _Lines("a.jsonl", 21, 30), other)])
    message = str(pool._death(pending))
    assert message.startswith("a.jsonl: lines 11-20: a tokenizer worker died (out of memory?) while encoding them "
                              "(killed by SIGKILL)")
