"""mftctl validate and render."""

from __future__ import annotations

from mft_operator import cli, yamlio

from .helpers import EXAMPLES, INVALID, ROOT


def test_validate_accepts_the_examples(capsys):
    assert cli.main(["validate", *map(str, EXAMPLES)]) == 0
    assert capsys.readouterr().out == ""


def test_validate_names_file_object_and_field_path(capsys, tmp_path):
    bad = ROOT / "examples" / "invalid" / "min-lr-above-learning-rate.yaml"
    both = tmp_path / "both.yaml"
    both.write_text(EXAMPLES[0].read_text() + "\n---\n" + bad.read_text())
    assert cli.main(["validate", str(both)]) == 1
    assert capsys.readouterr().out == (
        f"{both}: MFTJob/min-lr-above-learning-rate: spec.training.minLr: Invalid value: "
        "minLr must be less than or equal to learningRate\n"
    )


def test_validate_rejects_every_invalid_example(capsys):
    assert cli.main(["validate", *map(str, INVALID)]) == 1
    reported = {line.split(":", 1)[0] for line in capsys.readouterr().out.splitlines()}
    assert reported == {str(p) for p in INVALID}


def test_validate_reports_unreadable_yaml(capsys, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [unclosed\n")
    assert cli.main(["validate", str(broken)]) == 1
    assert str(broken) in capsys.readouterr().err


def test_render_prints_the_objects_with_flags_applied(capsys):
    assert cli.main(["render", str(ROOT / "examples" / "sft.yaml"), "-n", "team", "--image", "img:2"]) == 0
    objects = list(yamlio.load_all(capsys.readouterr().out))
    assert [o["kind"] for o in objects] == ["ConfigMap", "PersistentVolumeClaim", "PyTorchJob"]
    assert all(o["metadata"]["namespace"] == "team" for o in objects)
    master = objects[-1]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert master["containers"][0]["image"] == "img:2"


def test_render_refuses_an_invalid_job(capsys):
    assert cli.main(["render", str(ROOT / "examples" / "invalid" / "lora-with-sft.yaml")]) == 1
    assert "spec.lora: Forbidden" in capsys.readouterr().err


def test_the_operator_package_never_imports_torch_or_the_trainer():
    import subprocess
    import sys

    code = ("import sys, mft_operator.cli, mft_operator.handlers, mft_operator.render; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'mft_trainer')]; "
            "print(*bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
