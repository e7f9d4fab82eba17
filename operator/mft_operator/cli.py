"""``mftctl``: validate and render MFTJob manifests offline, and run the operator."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence, TextIO

import yaml

from . import API_GROUP, KIND, render, settings as settings_mod, validation, yamlio

STDIN = Path("-")


class InputError(Exception):
    """A manifest that cannot be read; the message is one line that names the file."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.command(args)
    except settings_mod.SettingsError as exc:
        parser.error(str(exc))
        return 2
    except InputError as exc:
        print(exc, file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mftctl", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    validate = commands.add_parser("validate", help="check MFTJob manifests with the CRD's schema and rules")
    validate.add_argument("files", nargs="+", type=Path, metavar="FILE", help="a manifest file, or - for standard input")
    validate.set_defaults(command=cmd_validate)

    render_cmd = commands.add_parser("render", help="print the objects the operator would create")
    render_cmd.add_argument("file", type=Path, metavar="FILE", help="a manifest file, or - for standard input")
    render_cmd.add_argument("--namespace", "-n", help="namespace of the MFTJob when the manifest has none")
    _settings_flags(render_cmd)
    render_cmd.set_defaults(command=cmd_render)

    run = commands.add_parser("run", help="run an MFTJob on this machine, without a cluster")
    run.add_argument("file", type=Path, metavar="FILE",
                     help="the MFTJob manifest (one job); the local folders of its volumes come from its "
                          "local.mft.dev/mounts annotation, relative to the manifest's folder")
    run.add_argument("--local", action="store_true", required=True,
                     help="run here: the rendered launch command and env, volumes mapped to local folders")
    run.add_argument("--mount", action="append", default=[], metavar="MOUNT_PATH=DIR",
                     help="local folder behind a mount path, DIR relative to the current directory (repeatable; "
                          "adds to the local.mft.dev/mounts annotation and wins over it for the same mount path)")
    run.add_argument("--workdir", type=Path, help="folder for the config and default checkpoints (default runs/NAME)")
    run.add_argument("--nproc", type=int, help="processes per node (default: gpusPerNode when that many GPUs are visible, else 1)")
    _settings_flags(run)
    run.set_defaults(command=cmd_run)

    reference = commands.add_parser("reference", help="print the MFTJob API reference (Markdown) from the CRD")
    reference.add_argument("--write", type=Path, metavar="FILE", help="replace the reference section of FILE instead")
    reference.set_defaults(command=cmd_reference)

    operator = commands.add_parser("operator", help="run the operator (kopf, standalone)")
    scope = operator.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", dest="namespaces", metavar="NS",
                       help="watch this namespace (repeatable); default MFT_WATCH_NAMESPACES, else all")
    scope.add_argument("--all-namespaces", "-A", action="store_const", const=(), dest="namespaces",
                       help="watch the whole cluster")
    operator.add_argument("--liveness", metavar="URL", help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    operator.add_argument("--metrics-port", type=int, metavar="PORT",
                          help=_setting_help("port of the Prometheus /metrics endpoint", "metrics_port"))
    operator.add_argument("--progress-interval", type=float, dest="progress_interval_seconds", metavar="SECONDS",
                          help=_setting_help("how often trainer progress is written to MFTJob status, at most "
                                             f"{settings_mod.MAX_PROGRESS_INTERVAL_SECONDS:g}",
                                             "progress_interval_seconds"))
    operator.add_argument("--max-concurrent-reconciles", type=int, metavar="N",
                          help=_setting_help("MFTJobs reconciled at once", "max_concurrent_reconciles"))
    operator.add_argument("--log-format", choices=("json", "text"), help=_setting_help("log line format", "log_format"))
    operator.add_argument("--log-level", choices=settings_mod.LOG_LEVELS,
                          help=_setting_help("least severe level logged", "log_level"))
    _settings_flags(operator)
    operator.set_defaults(command=cmd_operator)
    return parser


def _setting_help(text: str, setting: str) -> str:
    """A settings flag's help: what it sets, then the environment variable it overrides and the default."""
    default = getattr(settings_mod.Settings(), setting)
    shown = f"{default:g}" if isinstance(default, float) else default
    return f"{text} ({settings_mod.ENV[setting]}, default {shown})"


def _settings_flags(parser: argparse.ArgumentParser) -> None:
    """The operator's defaults for what an MFTJob leaves out."""
    parser.add_argument("--image", dest="trainer_image", metavar="IMAGE",
                        help=_setting_help("trainer image of MFTJobs without spec.image", "trainer_image"))
    parser.add_argument("--default-gpus-per-node", type=int, metavar="N",
                        help=_setting_help("spec.resources.gpusPerNode when unset; 0 trains on CPU", "default_gpus_per_node"))
    parser.add_argument("--default-cpu", metavar="QUANTITY",
                        help=_setting_help("spec.resources.cpu when unset", "default_cpu"))
    parser.add_argument("--default-memory", metavar="QUANTITY",
                        help=_setting_help("spec.resources.memory when unset", "default_memory"))
    parser.add_argument("--default-shm-size", metavar="QUANTITY",
                        help=_setting_help("spec.resources.shmSize, the size of /dev/shm, when unset", "default_shm_size"))


def _settings(args: argparse.Namespace) -> settings_mod.Settings:
    names = {f for f in settings_mod.ENV if hasattr(args, f)}
    overrides: dict[str, Any] = {name: getattr(args, name) for name in names}
    if overrides.get("namespaces") is not None:
        overrides["namespaces"] = tuple(overrides["namespaces"])
    return settings_mod.from_env(os.environ, **overrides)


def _read(path: Path) -> str:
    """The text of ``path`` (``-``: standard input)."""
    try:
        return sys.stdin.read() if path == STDIN else path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{_name(path)}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{_name(path)}: not UTF-8 text: {exc.reason} at byte {exc.start}") from exc


def _documents(path: Path) -> list[Any]:
    """The YAML documents of ``path`` (``-``: standard input)."""
    text = _read(path)
    try:
        return list(yamlio.load_all(text))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise InputError(f"{_name(path)}: not valid YAML: {exc.problem or exc.context}{where}") from exc
    except yaml.YAMLError as exc:
        raise InputError(f"{_name(path)}: not valid YAML: {' '.join(str(exc).split())}") from exc


def _name(path: Path) -> str:
    return "<stdin>" if path == STDIN else str(path)


def _mftjobs(path: Path) -> list[Any]:
    """The documents of ``path`` that are MFTJobs, or meant to be (they are validated); documents of
    other kinds (a PersistentVolumeClaim beside the job) are skipped, with a note on stderr."""
    documents = _documents(path)
    if not documents:
        raise InputError(f"{_name(path)}: no YAML documents")
    jobs = []
    for doc in documents:
        if _other_kind(doc):
            print(f"{_name(path)}: {_label(doc)}: skipped, not an {KIND}", file=sys.stderr)
        else:
            jobs.append(doc)
    return jobs


def _other_kind(doc: Any) -> bool:
    """A manifest of another kind. One without a kind, or of this API group, is validated as an MFTJob."""
    if not isinstance(doc, dict) or not doc.get("kind") or doc["kind"] == KIND:
        return False
    return not str(doc.get("apiVersion", "")).startswith(f"{API_GROUP}/")


def _label(doc: Any) -> str:
    if not isinstance(doc, dict):
        return "<document>"
    metadata = doc.get("metadata") or {}
    generated = f"{metadata['generateName']}*" if metadata.get("generateName") else None
    name = metadata.get("name") or generated or "<unnamed>"
    return f"{doc.get('kind') or '<no kind>'}/{name}"


def cmd_validate(args: argparse.Namespace) -> int:
    """Every error as ``FILE: Kind/name: field.path: message``; exit 1 when there is one."""
    failed = False
    for path in args.files:
        try:
            jobs = _mftjobs(path)
        except InputError as exc:
            print(exc, file=sys.stderr)
            failed = True
            continue
        failed = _report(path, jobs, sys.stdout) or failed
    return 1 if failed else 0


def _report(path: Path, jobs: list[Any], out: TextIO) -> bool:
    """Print every validation error of ``jobs`` to ``out``; True when there was one."""
    failed = False
    for job in jobs:
        for error in validation.validate(job):
            print(f"{_name(path)}: {_label(job)}: {error}", file=out)
            failed = True
    return failed


def _unnamed(path: Path, jobs: list[dict[str, Any]]) -> bool:
    """Say so for each valid job with only a generateName; True when there was one. Its objects
    (and a local run's folder) are named after the job, and only the apiserver picks a generated name."""
    unnamed = [job for job in jobs if not job["metadata"].get("name")]
    for job in unnamed:
        print(f"{_name(path)}: {_label(job)}: metadata.name: Required value: expected a name to name the job's "
              f"objects after, found only generateName {job['metadata']['generateName']!r} (which the apiserver "
              "completes at creation); set metadata.name", file=sys.stderr)
    return bool(unnamed)


def cmd_render(args: argparse.Namespace) -> int:
    """Validate first: the operator never sees an object the apiserver would reject."""
    settings = _settings(args)
    jobs = _mftjobs(args.file)
    if not jobs:
        print(f"{_name(args.file)}: no {KIND} to render", file=sys.stderr)
        return 1
    if _report(args.file, jobs, sys.stderr) or _unnamed(args.file, jobs):
        return 1
    objects = []
    for job in jobs:
        if args.namespace and not job["metadata"].get("namespace"):
            job["metadata"]["namespace"] = args.namespace
        objects.extend(render.render(job, settings))
    sys.stdout.write(yamlio.dump_all(objects))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from . import local

    jobs = _mftjobs(args.file)
    if len(jobs) != 1:
        print(f"{_name(args.file)}: expected exactly one {KIND}, found {len(jobs)}", file=sys.stderr)
        return 1
    (job,) = jobs
    if _report(args.file, jobs, sys.stderr) or _unnamed(args.file, jobs):
        return 1
    try:
        plan = local.plan(job, args.file.resolve().parent, _settings(args), workdir=args.workdir,
                          mount_flags=args.mount, nproc=args.nproc, master_port=local.free_port(),
                          gpus_visible=local.visible_gpus())
    except local.LocalRunError as exc:
        print(f"{args.file}: {exc}", file=sys.stderr)
        return 1
    grace = job["spec"].get("checkpoint", {}).get("preemptionGraceSeconds", 120)
    return local.execute(plan, grace)


def cmd_reference(args: argparse.Namespace) -> int:
    from . import reference

    if args.write is None:
        sys.stdout.write(reference.markdown())
        return 0
    try:
        updated = reference.embed(_read(args.write))
    except ValueError as exc:  # no reference markers
        raise InputError(f"{args.write}: {exc}") from exc
    try:
        args.write.write_text(updated, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{args.write}: {exc.strerror or exc}") from exc
    return 0


def cmd_operator(args: argparse.Namespace) -> int:
    from . import handlers  # kopf and the kubernetes client load only for this command

    settings = _settings(args)
    handlers.run(settings, args.liveness or f"http://0.0.0.0:{settings.health_port}/healthz")
    return 0


if __name__ == "__main__":
    sys.exit(main())
