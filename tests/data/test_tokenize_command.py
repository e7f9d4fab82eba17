"""`mft-train tokenize`: the contract other checks rely on."""

import json
import unicodedata

import pytest
from data_fixtures import EXAMPLES, chat, make_config, write_jsonl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mft_trainer.cli import main
from mft_trainer.data import build_datasets

turn = st.tuples(
    st.sampled_from(["system", "human", "bot"]),
    st.text(max_size=10) | st.sampled_from(["<|endoftext|>", "<|role_end|>"]),
)


def tokenize_command(capsys, *argv):
    code = main(["tokenize", *map(str, argv)])
    out, err = capsys.readouterr()
    return (
        code,
        [json.loads(line) for line in out.split("\n") if line],
        err,
    )  # not splitlines: U+2028 is no line end in JSONL


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dialogs=st.lists(st.lists(turn, min_size=1, max_size=5).filter(lambda turns: any(r == "bot" for r, _ in turns)),
                        min_size=1, max_size=4))
def test_output_satisfies_the_mask_property(tmp_path, capsys, tokenizer_dir, tokenizer, dialogs):
    path = write_jsonl(tmp_path / "chat.jsonl", [chat(*turns) for turns in dialogs])
    code, outputs, _ = tokenize_command(capsys, "--tokenizer", tokenizer_dir, "--mode", "sft", "--input", path)
    assert code == 0 and len(outputs) == len(dialogs)
    for turns, output in zip(dialogs, outputs):
        assert len(output["input_ids"]) == len(output["loss_mask"])
        trained = [i for i, m in zip(output["input_ids"], output["loss_mask"]) if m]
        bots = "".join(unicodedata.normalize("NFC", c) + tokenizer.eos_token for role, c in turns if role == "bot")
        assert tokenizer.backend_tokenizer.decode(trained, skip_special_tokens=False) == bots


def test_text_and_sst(capsys, tiny_dir):
    code, outputs, _ = tokenize_command(
        capsys, "--tokenizer", tiny_dir, "--mode", "sst", "--input", EXAMPLES / "code-helper" / "part-000.jsonl"
    )
    assert code == 0 and len(outputs) == 90
    assert outputs[0]["text"].startswith("<|role_start|>")
    assert all(set(o["loss_mask"]) == {1} for o in outputs)


def test_seq_length_truncates_and_counts_as_training_does(capsys, tiny_dir, tiny_tokenizer):
    exam = EXAMPLES / "code-exam" / "exam.jsonl"
    code, outputs, err = tokenize_command(
        capsys, "--tokenizer", tiny_dir, "--mode", "sft", "--input", exam, "--seq-length", 60
    )
    # Training's own decisions at this seq_length: truncated documents whose answers all lay beyond
    # it have no target left, and are neither trained nor printed.
    (counts,) = build_datasets(make_config(tiny_dir, [exam.parent], seq_length=60), tiny_tokenizer).report.files
    assert 0 < counts.truncated_without_targets < counts.truncated
    assert code == 0 and len(outputs) == 160 - counts.truncated_without_targets
    assert max(len(o["input_ids"]) for o in outputs) == 60
    # A truncated record's text is that of the tokens kept: a proper prefix of the whole record's.
    _, whole, _ = tokenize_command(capsys, "--tokenizer", tiny_dir, "--mode", "sft", "--input", exam)
    longer = {tuple(o["input_ids"][:60]): o["text"] for o in whole if len(o["input_ids"]) > 60}
    cuts = [(o["text"], longer[tuple(o["input_ids"])]) for o in outputs if tuple(o["input_ids"]) in longer]
    assert len(cuts) == counts.truncated - counts.truncated_without_targets
    assert all(text.startswith(cut) and text != cut for cut, text in cuts)
    assert all(any(o["loss_mask"][1:]) for o in outputs)  # a target after the first token: a label
    assert (f"exam.jsonl: 160 records, {counts.truncated} truncated, {counts.truncated_without_targets} "
            "truncated without targets") in err


def long_and_short_sst_task(tmp_path, tiny_dir, data_settings):
    """A task of a 50-token and a short record, and an sst config with seq_length 16 reading it."""
    path = write_jsonl(tmp_path / "t" / "a.jsonl", [{"text": "x " * 50}, {"text": "short"}])
    config = tmp_path / "config.yaml"
    config.write_text(
        f"mode: sst\nmodel: {{config: {{hidden_size: 8}}, tokenizer_path: {tiny_dir}}}\n"
        f"data: {{paths: ['{tmp_path / 't'}'], {data_settings}}}\ntraining: {{seq_length: 16}}\n"
    )
    return path, config


def test_drop_policy_from_config(tmp_path, capsys, tiny_dir):
    path, config = long_and_short_sst_task(tmp_path, tiny_dir, "overlong_policy: drop")
    code, outputs, err = tokenize_command(capsys, "--config", config, "--input", path)
    assert code == 0 and [o["text"] for o in outputs] == ["short<|endoftext|>"]
    assert "1 dropped" in err


def test_concat_mode_keeps_documents_whole(tmp_path, capsys, tiny_dir):
    # Training cuts a concat stream into windows: no document is over-long, none is cut or dropped.
    path, config = long_and_short_sst_task(tmp_path, tiny_dir, "padding_mode: concat, overlong_policy: drop")
    code, outputs, err = tokenize_command(capsys, "--config", config, "--input", path, "--seq-length", 16)
    assert code == 0 and [len(o["input_ids"]) > 16 for o in outputs] == [True, False]
    assert "0 truncated, 0 dropped" in err


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            ['{"text": "a"}', '{"chat_rounds": [{"role": "bot", "content": 1}]}'],
            "bad.jsonl:2: chat_rounds[0].content: expected a string, found number 1",
        ),
        ([], "bad.jsonl: empty file"),
    ],
)
def test_errors_exit_non_zero_with_file_and_line(tmp_path, capsys, tiny_dir, lines, message):
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    code, _, err = tokenize_command(capsys, "--tokenizer", tiny_dir, "--input", path)
    assert code == 1 and message in err


def test_tokenizer_is_required(capsys, tmp_path):
    code, _, err = tokenize_command(capsys, "--input", tmp_path / "a.jsonl")
    assert code == 1 and "--tokenizer: required" in err


def test_a_missing_input_file_is_a_one_line_error(tmp_path, capsys, tokenizer_dir):
    code, outputs, err = tokenize_command(capsys, "--tokenizer", tokenizer_dir, "--input", tmp_path / "nope.jsonl")
    assert (code, outputs) == (1, [])
    assert err.strip() == f"mft-train tokenize: {tmp_path / 'nope.jsonl'}: expected a .jsonl or .jsonl.gz file, found nothing"

