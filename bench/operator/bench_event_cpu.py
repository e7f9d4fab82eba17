"""The operator's CPU per MFTJob for the work around its reconcile, beside kopf's and PyYAML's defaults.

    .venv/bin/python bench/operator/bench_event_cpu.py [--jobs 500] [--repeats 5]

Per job, the operator's watches deliver about 4 MFTJob, 4.8 PyTorchJob and 4 pod events (the
handler counts of bench_scale.py's N=500 log), and it writes the trainer config of the job once.
Measured in process, on bodies recorded from the end-to-end cluster (``bodies/``, managedFields
included), CPU per job for:

- **diff base**: what kopf builds and reads for every event to diff the object for change
  handlers (kopf's default ``AnnotationsDiffBaseStorage``) vs ``handlers.NoDiffBase``, which the
  operator configures as it has no change handlers;
- **config YAML**: the trainer config written with PyYAML's own emitter vs libyaml's
  (``yamlio.dump``; the text is the same, which is checked).

The end-to-end effect is in bench_scale.py: these are small next to the apiserver's time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import kopf
import yaml

from mft_operator import render, yamlio
from mft_operator.handlers import NoDiffBase
from mft_operator.settings import Settings

BODIES = Path(__file__).with_name("bodies")
EVENTS_PER_JOB = {"mftjob": 4.0, "pytorchjob": 4.8, "pod": 4.0}


class PyYAMLDumper(yaml.SafeDumper):
    """yamlio.Dumper's representers on PyYAML's pure-Python emitter."""

    yaml_representers = yamlio.Dumper.yaml_representers


def events(jobs: int) -> list[kopf.Body]:
    """The watch events of ``jobs`` jobs, in their per-job proportions."""
    found = []
    for kind, per_job in EVENTS_PER_JOB.items():
        found += [kopf.Body(json.loads((BODIES / f"{kind}.json").read_text()))] * round(per_job * jobs)
    return found


def cpu_per_job(work: Callable[[], None], jobs: int, repeats: int) -> list[float]:
    """Milliseconds of process CPU per job, one figure per repeat."""
    times = []
    for _ in range(repeats):
        started = time.process_time()
        work()
        times.append((time.process_time() - started) * 1e3 / jobs)
    return times


def diff_base(storage: kopf.DiffBaseStorage, bodies: list[kopf.Body]) -> Callable[[], None]:
    def work() -> None:
        for body in bodies:
            storage.fetch(body=body)
            storage.build(body=body)
    return work


def config_yaml(dumper: type, config: dict, jobs: int) -> Callable[[], None]:
    def work() -> None:
        for _ in range(jobs):
            yaml.dump(config, Dumper=dumper, sort_keys=False, default_flow_style=False, width=120)
    return work


def report(name: str, peer: list[float], ours: list[float]) -> None:
    print(f"{name:12s} peer min {min(peer):.3f} / median {statistics.median(peer):.3f} ms per job;"
          f"  ours min {min(ours):.3f} / median {statistics.median(ours):.3f};"
          f"  ours/peer (medians) {statistics.median(ours) / statistics.median(peer):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    bodies = events(args.jobs)
    report("diff base",
           cpu_per_job(diff_base(kopf.AnnotationsDiffBaseStorage(), bodies), args.jobs, args.repeats),
           cpu_per_job(diff_base(NoDiffBase(), bodies), args.jobs, args.repeats))

    job = json.loads((BODIES / "mftjob.json").read_text())
    config = render.context(job, Settings()).layout.config
    assert yamlio.dump(config) == yaml.dump(config, Dumper=PyYAMLDumper, sort_keys=False,
                                            default_flow_style=False, width=120), "emitters disagree"
    report("config YAML",
           cpu_per_job(config_yaml(PyYAMLDumper, config, args.jobs), args.jobs, args.repeats),
           cpu_per_job(config_yaml(yamlio.Dumper, config, args.jobs), args.jobs, args.repeats))


if __name__ == "__main__":
    main()
