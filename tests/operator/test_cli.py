"""mftctl validate, render, run --local (its checks) and reference, and the help of both CLIs."""

from __future__ import annotations

import argparse
import importlib
import io

import pytest

from mft_operator import cli, local, yamlio
from mft_operator.settings import ENV, Settings
from mft_trainer.cli import COMMANDS as TRAINER_COMMANDS

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


PVC = """apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: models}
spec: {accessModes: [ReadOnlyMany], resources: {requests: {storage: 10Gi}}}
"""


@pytest.mark.parametrize("command", [["render"], ["run", "--local"]])
def test_render_and_run_name_an_unreadable_file_in_one_line(capsys, tmp_path, command):
    missing, broken = tmp_path / "missing.yaml", tmp_path / "broken.yaml"
    broken.write_text("spec: [unclosed\n")
    assert cli.main([command[0], str(missing), *command[1:]]) == 1
    assert capsys.readouterr().err == f"{missing}: No such file or directory\n"
    assert cli.main([command[0], str(broken), *command[1:]]) == 1
    assert capsys.readouterr().err == (f"{broken}: not valid YAML: expected ',' or ']', but got '<stream end>' "
                                       "(line 2, column 1)\n")


def test_validate_names_an_unreadable_file_in_one_line(capsys, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: b: c\n")
    assert cli.main(["validate", str(broken), str(EXAMPLES[0])]) == 1
    assert capsys.readouterr().err == f"{broken}: not valid YAML: mapping values are not allowed here (line 1, column 5)\n"


def test_render_and_validate_skip_other_kinds_and_say_so(capsys, tmp_path):
    both = tmp_path / "both.yaml"
    both.write_text(PVC + "---\n" + (ROOT / "examples" / "sft.yaml").read_text())
    assert cli.main(["validate", str(both)]) == 0
    out, err = capsys.readouterr()
    assert out == "" and err == f"{both}: PersistentVolumeClaim/models: skipped, not an MFTJob\n"
    assert cli.main(["render", str(both)]) == 0
    out, err = capsys.readouterr()
    assert [o["kind"] for o in yamlio.load_all(out)] == ["ConfigMap", "PersistentVolumeClaim", "PyTorchJob"]
    assert err == f"{both}: PersistentVolumeClaim/models: skipped, not an MFTJob\n"


def test_a_document_of_the_mft_api_group_is_never_skipped(capsys, tmp_path):
    typo = tmp_path / "typo.yaml"
    typo.write_text((ROOT / "examples" / "sft.yaml").read_text().replace("kind: MFTJob", "kind: MFTJobs"))
    assert cli.main(["validate", str(typo)]) == 1
    assert 'kind: Unsupported value: "MFTJobs"' in capsys.readouterr().out


def test_render_needs_an_mftjob(capsys, tmp_path):
    only_pvc = tmp_path / "pvc.yaml"
    only_pvc.write_text(PVC)
    assert cli.main(["render", str(only_pvc)]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == f"{only_pvc}: no MFTJob to render"


def test_validate_and_render_read_standard_input(capsys, monkeypatch):
    manifest = PVC + "---\n" + (ROOT / "examples" / "invalid" / "lora-with-sft.yaml").read_text()
    monkeypatch.setattr("sys.stdin", io.StringIO(manifest))
    assert cli.main(["validate", "-"]) == 1
    out, err = capsys.readouterr()
    assert out.startswith("<stdin>: MFTJob/lora-with-sft: spec.lora: Forbidden")
    assert err == "<stdin>: PersistentVolumeClaim/models: skipped, not an MFTJob\n"
    monkeypatch.setattr("sys.stdin", io.StringIO((ROOT / "examples" / "sft.yaml").read_text()))
    assert cli.main(["render", "-"]) == 0
    assert [o["kind"] for o in yamlio.load_all(capsys.readouterr().out)][-1] == "PyTorchJob"


def test_the_operator_package_never_imports_torch_or_the_trainer():
    import subprocess
    import sys

    code = ("import sys, mft_operator.cli, mft_operator.handlers, mft_operator.render; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'mft_trainer')]; "
            "print(*bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _generated(tmp_path) -> str:
    """The sft example, named by the apiserver at creation (``kubectl create``)."""
    job = yamlio.load((ROOT / "examples" / "sft.yaml").read_text())
    job["metadata"] = {"generateName": "nightly-sft-"}
    manifest = tmp_path / "generated.yaml"
    manifest.write_text(yamlio.dump(job))
    return str(manifest)


def test_validate_accepts_a_generate_name(capsys, tmp_path):
    assert cli.main(["validate", _generated(tmp_path)]) == 0
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("command", [["render"], ["run", "--local"]])
def test_render_and_run_need_a_concrete_name(capsys, tmp_path, command):
    manifest = _generated(tmp_path)
    assert cli.main([command[0], manifest, *command[1:]]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == (
        f"{manifest}: MFTJob/nightly-sft-*: metadata.name: Required value: expected a name to name the job's "
        "objects after, found only generateName 'nightly-sft-' (which the apiserver completes at creation); "
        "set metadata.name\n")


def _with_integral_floats() -> dict:
    job = yamlio.load((ROOT / "examples" / "lora.yaml").read_text())
    job["spec"]["resources"].update(gpusPerNode=8.0, nodes=2.0)
    job["spec"]["training"]["seqLength"] = 2048.0
    return job


def test_render_writes_integral_floats_as_integers(capsys, tmp_path):
    """As the apiserver stores them: gpusPerNode: 8.0 becomes 8 in the pods and the trainer config."""
    manifest = tmp_path / "floats.yaml"
    manifest.write_text(yamlio.dump(_with_integral_floats()))
    assert cli.main(["render", str(manifest)]) == 0
    objects = {o["kind"]: o for o in yamlio.load_all(capsys.readouterr().out)}
    master = objects["PyTorchJob"]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert master["resources"]["limits"]["nvidia.com/gpu"] == "8"
    config = objects["ConfigMap"]["data"]["config.yaml"]
    assert "seq_length: 2048\n" in config and "2048.0" not in config
    assert type(yamlio.load(config)["training"]["seq_length"]) is int


def test_run_local_plans_with_integral_floats_as_integers(tmp_path):
    mounts = [f"/models={tmp_path / 'models'}", f"/data={tmp_path / 'data'}"]
    plan = local.plan(_with_integral_floats(), ROOT / "examples", Settings(), workdir=tmp_path / "run",
                      mount_flags=mounts, gpus_visible=8)
    assert "--nproc_per_node=8" in plan.command and type(plan.config["training"]["seq_length"]) is int


def test_reference_write_names_an_unreadable_file_in_one_line(capsys, tmp_path):
    missing, unmarked = tmp_path / "missing.md", tmp_path / "unmarked.md"
    unmarked.write_text("# no markers\n")
    assert cli.main(["reference", "--write", str(missing)]) == 1
    assert capsys.readouterr().err == f"{missing}: No such file or directory\n"
    assert cli.main(["reference", "--write", str(tmp_path)]) == 1
    assert capsys.readouterr().err == f"{tmp_path}: Is a directory\n"
    assert cli.main(["reference", "--write", str(unmarked)]) == 1
    assert capsys.readouterr().err.startswith(f"{unmarked}: the document has no reference markers")


def _undocumented(parser: argparse.ArgumentParser, prog: str) -> list[str]:
    """Options and positionals of ``parser`` and its subcommands that have no help text."""
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                missing += _undocumented(sub, f"{prog} {name}")
        elif not isinstance(action, argparse._HelpAction) and not action.help:
            missing.append(f"{prog} {'/'.join(action.option_strings) or action.dest}")
    return missing


def test_every_mftctl_flag_has_a_help_text():
    assert _undocumented(cli._parser(), "mftctl") == []


def test_every_mft_train_flag_has_a_help_text():
    """mft-train adds a command's flags only when it is chosen (torch loads slowly): add each one here."""
    missing = []
    for name, (module_name, _) in TRAINER_COMMANDS.items():
        parser = argparse.ArgumentParser()
        importlib.import_module(f"mft_trainer.commands.{module_name}").add_arguments(parser)
        missing += _undocumented(parser, f"mft-train {name}")
    assert missing == []


def test_operator_flags_name_their_environment_variables():
    (commands,) = [a for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction)]
    helps: dict[str, str] = {}
    for action in commands.choices["operator"]._actions:
        helps[action.dest] = helps.get(action.dest, "") + (action.help or "")
    named = {setting: variable for setting, variable in ENV.items() if setting in helps}
    assert len(named) >= 10
    for setting, variable in named.items():
        assert variable in helps[setting], setting
