"""Binary datasets: preprocess -> load equals tokenize; wrong tokenizer, settings and damaged files refused."""

import json
import os

import numpy as np
import pytest
from data_fixtures import EXAMPLES, chat, make_config, write_jsonl
from mft_trainer.cli import main
from mft_trainer.data import DataError, binary, build_datasets, encoding, tokenizer_fingerprint
from mft_trainer.data.binary import token_dtype
from mft_trainer.data.builder import load_documents

TASKS = [EXAMPLES / "code-helper", EXAMPLES / "code-exam", EXAMPLES / "code-text"]


def preprocess(tokenizer_dir, output, *extra, inputs=TASKS):
    argv = [
        "preprocess",
        "--tokenizer",
        str(tokenizer_dir),
        "--input",
        *map(str, inputs),
        "--output",
        str(output),
        *extra,
    ]
    assert main(argv) == 0
    return [output / path.name for path in inputs]


def assert_same_rows(a, b):
    assert len(a) == len(b)
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert x["task_id"] == y["task_id"]
        for key in ("input_ids", "labels", "position_ids", "sample_index"):
            assert np.array_equal(x[key], y[key]), (i, key)


@pytest.mark.parametrize(("mode", "padding_mode"), [("sft", "pack"), ("sft", "padding"), ("sst", "concat")])
def test_round_trip_equals_jsonl(tmp_path, monkeypatch, tokenizer_dir, tokenizer, mode, padding_mode):
    monkeypatch.setattr(encoding, "CHUNK_BYTES", 20_000)  # several chunks per task: the two workers share them
    folders = preprocess(tokenizer_dir, tmp_path / "bin", "--mode", mode, "--workers", "2")
    settings = dict(mode=mode, seq_length=200, padding_mode=padding_mode)
    from_jsonl = build_datasets(make_config(tokenizer_dir, TASKS, **settings), tokenizer)
    from_bin = build_datasets(make_config(tokenizer_dir, folders, format="bin", **settings), tokenizer)
    assert from_bin.tasks == from_jsonl.tasks
    assert_same_rows(from_bin.train, from_jsonl.train)
    assert_same_rows(from_bin.valid, from_jsonl.valid)
    assert from_bin.report.to_dict() == from_jsonl.report.to_dict()


def test_loading_memory_maps(tmp_path, tiny_dir, tiny_tokenizer):
    folders = preprocess(tiny_dir, tmp_path / "bin", "--mode", "sft")
    (documents, *_) = load_documents(make_config(tiny_dir, folders, format="bin"), tiny_tokenizer)
    assert isinstance(documents.tokens, np.memmap) and isinstance(documents.loss_mask, np.memmap)
    assert documents.tokens.dtype == np.uint16


def test_manifest(tmp_path, tiny_dir, tiny_tokenizer):
    task = tmp_path / "qa"
    write_jsonl(task / "a.jsonl", [chat(("human", "q"), ("bot", "a " * 40)), {"text": "x"}])
    (folder,) = preprocess(tiny_dir, tmp_path / "bin", "--mode", "sft", "--seq-length", "20", inputs=[task])
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["tokenizer_hash"] == tokenizer_fingerprint(tiny_tokenizer)
    assert {
        k: manifest[k] for k in ("format", "version", "task", "mode", "token_dtype", "seq_length", "vocab_size")
    } == {
        "format": "mft-bin",
        "version": 1,
        "task": "qa",
        "mode": "sft",
        "token_dtype": "uint16",
        "seq_length": 20,
        "vocab_size": 4096,
    }
    (counts,) = manifest["files"]
    assert (counts["path"], counts["records"], counts["skipped"], counts["truncated"]) == (
        str(task / "a.jsonl"),
        2,
        0,
        1,
    )
    assert manifest["documents"] == 2 and (folder / "offsets.bin").stat().st_size == 3 * 8


@pytest.fixture
def config_file(tmp_path, tiny_dir):
    path = tmp_path / "config.yaml"
    path.write_text(
        f"mode: sft\nmodel: {{path: {tiny_dir}}}\ndata: {{paths: ['{tmp_path / 'qa'}'], on_bad_record: skip}}\n"
        "training: {seq_length: 20}\n"
    )
    write_jsonl(tmp_path / "qa" / "a.jsonl", [chat(("human", "q"), ("bot", "a " * 40)), "{bad", {"text": "x"}])
    return path


def test_preprocess_from_config(tmp_path, config_file, capsys):
    assert main(["preprocess", "--config", str(config_file), "--output", str(tmp_path / "bin")]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(tmp_path / "bin" / "qa")
    assert "2 records, 1 skipped, 1 truncated" in err
    manifest = json.loads((tmp_path / "bin" / "qa" / "manifest.json").read_text())
    assert manifest["seq_length"] == 20 and manifest["files"][0]["skipped"] == 1


def test_preprocess_in_concat_mode_counts_no_overlong_documents(tmp_path, config_file, capsys):
    text = config_file.read_text().replace("mode: sft", "mode: sst")
    config_file.write_text(text.replace("on_bad_record: skip", "on_bad_record: skip, padding_mode: concat"))
    assert main(["preprocess", "--config", str(config_file), "--output", str(tmp_path / "bin")]) == 0
    assert "2 records, 1 skipped, 0 truncated" in capsys.readouterr().err
    manifest = json.loads((tmp_path / "bin" / "qa" / "manifest.json").read_text())
    assert manifest["seq_length"] is None and manifest["files"][0]["truncated"] == 0


def test_preprocess_counts_truncation_without_targets_as_training_does(tmp_path, capsys, tiny_dir, tiny_tokenizer):
    task = tmp_path / "qa"
    write_jsonl(task / "a.jsonl", [chat(("human", "q " * 40), ("bot", "a")), chat(("human", "q"), ("bot", "a " * 40))])
    (folder,) = preprocess(tiny_dir, tmp_path / "bin", "--mode", "sft", "--seq-length", "40", inputs=[task])
    assert "2 truncated (1 of them without targets, dropped)" in capsys.readouterr().err
    (counts,) = json.loads((folder / "manifest.json").read_text())["files"]
    assert (counts["truncated"], counts["truncated_without_targets"]) == (2, 1)
    # Stored whole: training counts again at its own seq_length, which cuts nothing at 512.
    (loaded,) = build_datasets(make_config(tiny_dir, [folder], format="bin", seq_length=512),
                               tiny_tokenizer).report.files
    assert (loaded.truncated, loaded.truncated_without_targets) == (0, 0)


def test_int32_when_the_vocabulary_does_not_fit(tmp_path, monkeypatch, tiny_dir, tiny_tokenizer):
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.int32
    monkeypatch.setattr(binary, "token_dtype", lambda vocab_size: np.dtype(np.int32))
    folders = preprocess(tiny_dir, tmp_path / "bin", "--mode", "sft", inputs=TASKS[1:2])
    config = make_config(tiny_dir, folders, format="bin")
    assert_same_rows(
        build_datasets(config, tiny_tokenizer).train,
        build_datasets(make_config(tiny_dir, TASKS[1:2]), tiny_tokenizer).train,
    )


def test_other_tokenizer_is_refused(tmp_path, tiny_dir, neox_dir, tiny_tokenizer, neox_tokenizer):
    folders = preprocess(tiny_dir, tmp_path / "bin", "--mode", "sft", inputs=TASKS[1:2])
    message = (
        f"made with another tokenizer: dataset tokenizer hash {tokenizer_fingerprint(tiny_tokenizer)}, "
        f"training tokenizer hash {tokenizer_fingerprint(neox_tokenizer)}"
    )
    with pytest.raises(DataError, match=message):
        build_datasets(make_config(neox_dir, folders, format="bin"), neox_tokenizer)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"mode": "sst"}, "mode: training expects 'sst', the dataset was preprocessed with 'sft'"),
        (
            {"role_start": "<s>"},
            "role_start: training expects '<s>', the dataset was preprocessed with '<|role_start|>'",
        ),
    ],
)
def test_other_settings_are_refused(tmp_path, tiny_dir, tiny_tokenizer, setting, message):
    folders = preprocess(tiny_dir, tmp_path / "bin", "--mode", "sft", inputs=TASKS[1:2])
    with pytest.raises(DataError, match=message):
        build_datasets(make_config(tiny_dir, folders, format="bin", **setting), tiny_tokenizer)


@pytest.mark.parametrize(
    ("name", "damage", "message"),
    [
        (
            "tokens.bin",
            lambda b: b[:-2],
            r"tokens\.bin: truncated or corrupt: expected \d+ bytes \(\d+ x uint16, per the manifest\), found \d+ bytes",
        ),
        ("loss_mask.bin", lambda b: b + b"\0", r"loss_mask\.bin: truncated or corrupt"),
        ("offsets.bin", lambda b: b[:8] + b[16:] + b[8:16], r"offsets\.bin: corrupt document index"),
        ("offsets.bin", None, r"offsets\.bin: truncated or corrupt: expected \d+ bytes .* found missing"),
        (
            "manifest.json",
            lambda b: b[:10],
            r"manifest\.json: expected a JSON manifest written by mft-train preprocess",
        ),
    ],
)
def test_damaged_files_are_detected(tmp_path, tiny_dir, tiny_tokenizer, name, damage, message):
    (folder,) = preprocess(tiny_dir, tmp_path / "bin", "--mode", "sft", inputs=TASKS[1:2])
    path = folder / name
    if damage is None:
        path.unlink()
    else:
        path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError, match=message):
        build_datasets(make_config(tiny_dir, [folder], format="bin"), tiny_tokenizer)


def _edited(manifest: dict, **changes) -> dict:
    return {k: v for k, v in {**manifest, **changes}.items() if v is not None}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: [m], r"manifest\.json: expected a JSON object written by mft-train preprocess, found list"),
        (lambda m: _edited(m, files=None), r"field files: expected a list of per-file counts, found None"),
        (lambda m: _edited(m, tokens=None), r"field tokens: expected a count \(an integer >= 0\), found None"),
        (lambda m: _edited(m, tokens="1333"), r"field tokens: expected a count \(an integer >= 0\), found '1333'"),
        (lambda m: _edited(m, token_dtype="float77"), r"field token_dtype: expected uint16 or int32, found 'float77'"),
        (lambda m: _edited(m, files=[{"records": 3}]), r"field files\[0\]: expected an object with a path and a records"),
    ],
)
def test_a_hand_edited_manifest_gets_a_message_naming_the_field(tmp_path, tiny_dir, tiny_tokenizer, edit, message):
    (folder,) = preprocess(tiny_dir, tmp_path / "bin", "--mode", "sft", inputs=TASKS[1:2])
    path = folder / "manifest.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    with pytest.raises(DataError, match=message):
        build_datasets(make_config(tiny_dir, [folder], format="bin"), tiny_tokenizer)


def test_existing_output_and_failures_leave_no_folder(tmp_path, tiny_dir, capsys):
    preprocess(tiny_dir, tmp_path / "bin", "--mode", "sft", inputs=TASKS[1:2])
    argv = ["preprocess", "--tokenizer", str(tiny_dir), "--mode", "sft", "--output", str(tmp_path / "bin")]
    assert main([*argv, "--input", str(TASKS[1])]) == 1
    assert "code-exam: already exists; remove it or choose another --output" in capsys.readouterr().err
    write_jsonl(tmp_path / "bad" / "a.jsonl", [{"text": "x"}, "{"])
    assert main([*argv, "--input", str(tmp_path / "bad")]) == 1
    assert "a.jsonl:2: expected a JSON object, found invalid JSON" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "bin").iterdir()) == ["code-exam"]


def test_an_output_that_cannot_be_a_folder_is_a_one_line_error(tmp_path, tiny_dir, capsys):
    (tmp_path / "file").write_text("")
    argv = ["preprocess", "--tokenizer", str(tiny_dir), "--mode", "sft", "--input", str(TASKS[1])]
    assert main([*argv, "--output", str(tmp_path / "file")]) == 1
    assert f"{tmp_path / 'file'}: expected a folder (or nothing) for --output, found a file" in capsys.readouterr().err
    # Below a file: the write itself fails (as on a full disk or a read-only volume).
    assert main([*argv, "--output", str(tmp_path / "file" / "bin")]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'file' / 'bin'}/.code-exam.partial: cannot write the dataset: Not a directory" in err
    assert "Traceback" not in err


def test_a_failing_task_leaves_none_of_the_tasks_before_it(tmp_path, tiny_dir, capsys):
    """All or nothing: after fixing the bad task, the same command runs again without an
    "already exists" for the tasks that had succeeded."""
    write_jsonl(tmp_path / "bad" / "a.jsonl", [{"text": "x"}, "{"])
    argv = ["preprocess", "--tokenizer", str(tiny_dir), "--mode", "sft", "--output", str(tmp_path / "bin"),
            "--input", *map(str, TASKS), str(tmp_path / "bad")]
    assert main(argv) == 1
    assert "a.jsonl:2: expected a JSON object, found invalid JSON" in capsys.readouterr().err
    assert list((tmp_path / "bin").iterdir()) == []
    write_jsonl(tmp_path / "bad" / "a.jsonl", [{"text": "x"}])
    assert main(argv) == 0
    assert sorted(p.name for p in (tmp_path / "bin").iterdir()) == sorted([*(t.name for t in TASKS), "bad"])


def test_a_dataset_with_skipped_records_is_refused_when_bad_records_must_fail(tmp_path, config_file, tiny_dir,
                                                                            tiny_tokenizer, caplog):
    assert main(["preprocess", "--config", str(config_file), "--output", str(tmp_path / "bin")]) == 0
    folder = tmp_path / "bin" / "qa"
    with pytest.raises(DataError) as caught:
        build_datasets(make_config(tiny_dir, [folder], format="bin", on_bad_record="fail"), tiny_tokenizer)
    assert str(caught.value) == (
        f"{folder}: expected a dataset without bad records (data.on_bad_record: fail), found 1 skipped when it was "
        f"preprocessed with on_bad_record: skip, the first: {tmp_path / 'qa' / 'a.jsonl'}:2: expected a JSON object, "
        f"found invalid JSON (Expecting property name enclosed in double quotes at column 2); fix the records and "
        f"preprocess again, or set data.on_bad_record: skip"
    )
    datasets = build_datasets(make_config(tiny_dir, [folder], format="bin", on_bad_record="skip"), tiny_tokenizer)
    assert datasets.report.total("skipped") == 1
    assert "1 bad records skipped (data.on_bad_record: skip)" in caplog.text


def test_a_file_name_that_is_not_utf8_survives_the_manifest(tmp_path, tiny_dir, tiny_tokenizer):
    """Linux file names are bytes: Python holds an undecodable byte as a surrogate escape, which
    UTF-8 cannot encode."""
    task = tmp_path / "qa"
    task.mkdir()
    with open(os.fsencode(task) + b"/caf\xe9.jsonl", "wb") as f:  # Latin-1 for "café.jsonl"
        f.write(json.dumps(chat(("human", "q"), ("bot", "a"))).encode() + b"\n")
    (path,) = task.iterdir()
    (folder,) = preprocess(tiny_dir, tmp_path / "bin", "--mode", "sft", inputs=[task])
    text = (folder / "manifest.json").read_bytes().decode("utf-8")
    assert '"path": "' + str(task) + '/caf\\udce9.jsonl"' in text
    (counts,) = build_datasets(make_config(tiny_dir, [folder], format="bin"), tiny_tokenizer).report.files
    assert counts.path == str(path) and counts.records == 1


def test_a_source_changed_since_preprocessing_is_named_in_a_warning(tmp_path, tiny_dir, tiny_tokenizer, caplog):
    task = tmp_path / "qa"
    path = write_jsonl(task / "a.jsonl", [chat(("human", "q"), ("bot", "a"))] * 3)
    original, stat = path.read_bytes(), path.stat()
    (folder,) = preprocess(tiny_dir, tmp_path / "bin", "--mode", "sft", inputs=[task])
    (source,) = [f["source"] for f in json.loads((folder / "manifest.json").read_text())["files"]]
    assert source == {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    config = make_config(tiny_dir, [folder], format="bin")
    build_datasets(config, tiny_tokenizer)
    assert "changed since" not in caplog.text

    write_jsonl(path, [chat(("human", "q"), ("bot", "a"))] * 4)
    build_datasets(config, tiny_tokenizer)
    assert (f"{path}: changed since {folder} was preprocessed from it (expected {stat.st_size} bytes modified "
            in caplog.text)
    assert f"found {path.stat().st_size} bytes modified " in caplog.text
    assert "the dataset holds the old content; run mft-train preprocess again to train on the new one" in caplog.text

    caplog.clear()
    path.write_bytes(original)  # the same size, modified later
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    build_datasets(config, tiny_tokenizer)
    assert f"{path}: changed since" in caplog.text

    caplog.clear()
    path.unlink()  # sources are often not mounted where training runs: nothing to compare with
    build_datasets(config, tiny_tokenizer)
    assert "changed since" not in caplog.text


def test_a_manifest_without_sources_still_loads(tmp_path, tiny_dir, tiny_tokenizer, caplog):
    """A dataset preprocessed before sources were recorded (same format version)."""
    (folder,) = preprocess(tiny_dir, tmp_path / "bin", "--mode", "sft", inputs=TASKS[1:2])
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest["files"]:
        del entry["source"]
    manifest_path.write_text(json.dumps(manifest))
    config = make_config(tiny_dir, [folder], format="bin")
    assert_same_rows(build_datasets(config, tiny_tokenizer).train,
                     build_datasets(make_config(tiny_dir, TASKS[1:2]), tiny_tokenizer).train)
    manifest["files"][0]["source"] = {"path": "a.jsonl", "size": "12"}
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"field files\[0\]\.source: expected an object with a path, a size and an "
                                        r"mtime_ns, found \{'path': 'a\.jsonl', 'size': '12'\}"):
        build_datasets(config, tiny_tokenizer)
