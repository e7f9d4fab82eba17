"""bench/operator/bench_crd_validation.py's CRD variant and summary (the runs themselves need a
cluster: they are the benchmark, not a test)."""

from __future__ import annotations

import importlib.util
import json

import yaml

from .helpers import ROOT


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_crd_validation",
                                                  ROOT / "bench" / "operator" / "bench_crd_validation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_no_cel_variant_drops_every_rule_and_keeps_the_schema():
    bench = load_bench()
    crd = yaml.safe_load((ROOT / "crds" / "mftjob.yaml").read_text())
    stripped = bench.without_cel(crd)
    assert "x-kubernetes-validations" in json.dumps(crd) and "x-kubernetes-validations" not in json.dumps(stripped)
    schema = stripped["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert set(schema["properties"]) == set(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"])


def test_each_phase_is_summarized_with_the_ratio_of_the_medians():
    bench = load_bench()
    runs = {"ours": [dict.fromkeys(bench.PHASES, ms) for ms in (4.0, 6.0, 5.0)],
            "no CEL": [dict.fromkeys(bench.PHASES, ms) for ms in (4.0, 3.0, 5.0)]}
    table = bench.report(runs)
    assert "| create | 4.00 / 5.00 / 6.00 | 3.00 / 4.00 / 5.00 | 1.25x |" in table
    assert table.count("1.25x") == len(bench.PHASES)
