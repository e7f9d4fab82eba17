"""Task folders: names, duplicates, empty folders, file selection."""

import pytest
from data_fixtures import write_jsonl
from mft_trainer.data import DataError
from mft_trainer.data.tasks import discover_binary_tasks, discover_jsonl_tasks, task_name


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("data/code-exam", "code-exam"),
        ("data/code-exam/", "code-exam"),
        ("data/code-exam//", "code-exam"),
        ("code-exam", "code-exam"),
        ("data/code-exam/.", "code-exam"),
        ("data/other/../code-exam", "code-exam"),
    ],
)
def test_task_name_is_last_component(path, name):
    assert task_name(path) == name


def test_task_name_of_the_current_folder_is_its_own_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert task_name(".") == tmp_path.name


def test_only_jsonl_files_in_name_order(tmp_path):
    task = tmp_path / "t"
    for name in ("b.jsonl", "a.jsonl.gz", "c.json", "README.md"):
        write_jsonl(task / name, [{"text": "x"}])
    (task / "sub").mkdir()
    (source,) = discover_jsonl_tasks([str(task) + "/"])
    assert source.name == "t"
    assert [p.name for p in source.files] == ["a.jsonl.gz", "b.jsonl"]


def test_duplicate_task_names(tmp_path):
    for parent in ("one", "two"):
        write_jsonl(tmp_path / parent / "qa" / "a.jsonl", [{"text": "x"}])
    with pytest.raises(DataError, match=r"two/qa/: duplicate task name 'qa' \(also .*one/qa\)"):
        discover_jsonl_tasks([str(tmp_path / "one" / "qa"), str(tmp_path / "two" / "qa") + "/"])


def test_empty_folder(tmp_path):
    (tmp_path / "t").mkdir()
    with pytest.raises(
        DataError, match=r"t: empty task folder: expected \*\.jsonl or \*\.jsonl\.gz files, found no files"
    ):
        discover_jsonl_tasks([str(tmp_path / "t")])


def test_folder_without_jsonl_files(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "data.json").write_text("{}")
    with pytest.raises(DataError, match=r"t: expected \*\.jsonl or \*\.jsonl\.gz files, found only data\.json"):
        discover_jsonl_tasks([str(tmp_path / "t")])


def test_missing_folder_file_and_no_paths(tmp_path):
    with pytest.raises(DataError, match="nope: task folder does not exist"):
        discover_jsonl_tasks([str(tmp_path / "nope")])
    write_jsonl(tmp_path / "f.jsonl", [{"text": "x"}])
    with pytest.raises(DataError, match=r"f\.jsonl: expected a task folder, found a file"):
        discover_jsonl_tasks([str(tmp_path / "f.jsonl")])
    with pytest.raises(DataError, match="data.paths: expected at least one task folder, found none"):
        discover_jsonl_tasks([])


def test_binary_task_needs_manifest(tmp_path):
    write_jsonl(tmp_path / "t" / "a.jsonl", [{"text": "x"}])
    with pytest.raises(DataError, match=r"t: expected a preprocessed task folder with manifest\.json"):
        discover_binary_tasks([str(tmp_path / "t")])


def test_an_unreadable_jsonl_entry_is_an_error_not_an_ignored_file(tmp_path):
    """Classified by name: a *.jsonl entry that cannot be read (a link into a volume that is not
    mounted, typically) would otherwise leave its records out of training without a word."""
    task = tmp_path / "t"
    write_jsonl(task / "a.jsonl", [{"text": "x"}])
    (task / "b.jsonl").symlink_to(tmp_path / "unmounted" / "b.jsonl")
    with pytest.raises(DataError) as caught:
        discover_jsonl_tasks([str(task)])
    assert str(caught.value) == (f"{task / 'b.jsonl'}: a JSONL data file that cannot be read: expected a readable "
                                 f"file, found a dangling symlink to {tmp_path / 'unmounted' / 'b.jsonl'}")
    (task / "b.jsonl").unlink()
    (task / "c.JSONL.GZ").mkdir()
    with pytest.raises(DataError, match=r"c\.JSONL\.GZ: a JSONL data file that cannot be read: expected a readable "
                                        r"file, found a folder$"):
        discover_jsonl_tasks([str(task)])
    (task / "c.JSONL.GZ").rmdir()
    (task / "d.jsonl").symlink_to(task / "a.jsonl")  # a link that resolves is data like any file
    (source,) = discover_jsonl_tasks([str(task)])
    assert [p.name for p in source.files] == ["a.jsonl", "d.jsonl"]
