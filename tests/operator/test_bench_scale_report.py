"""bench/operator/bench_scale.py's summary over repeated runs (the runs themselves need a cluster and
minutes each: they are the benchmark, not a test)."""

from __future__ import annotations

import importlib.util

from .helpers import ROOT


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_scale", ROOT / "bench" / "operator" / "bench_scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(n: int, repeat: int, children_s: float, child_p99: float, rss_peak_mb: float) -> dict:
    ours = dict.fromkeys(["status_s", "pods_s", "running_s", "child_p50", "status_p50", "cpu_burst_s", "cpu_steady_s",
                          "rss_idle_mb", "cpu_children_s", "machine_children_busy"], 1.0)
    ours |= {"children_s": children_s, "child_p99": child_p99, "status_p99": 0.5, "rss_peak_mb": rss_peak_mb,
             "steady_window_s": 20.0, "api_burst": 10 * n, "op_burst": 3 * n, "op_steady": 2 * n,
             "api_children": 5 * n, "op_children": 3 * n, "op_children_by": {}, "machine_children": {},
             "api_burst_by": {}, "op_burst_by": {}, "op_steady_by": {}}
    anchor = {"all_s": 4 * children_s, "p50": 2.0, "p99": 2 * child_p99, "requests": 5 * n, "create_s": 1.0}
    return {"n": n, "repeat": repeat, "nodes": 2, "ours": ours, "anchor": anchor}


def test_each_size_is_summarized_as_min_median_max_and_judged_by_its_median(capsys):
    bench = load_bench()
    results = [run(500, 1, 9.0, 1.5, 200), run(500, 2, 12.0, 2.5, 210), run(500, 3, 10.0, 1.8, 190)]
    bench.report(results, "abc123")
    out = capsys.readouterr().out
    assert "commit abc123" in out
    assert "N=500 (3 runs): every PyTorchJob 9.0 / 10.0 / 12.0 s, child p99 1.50 / 1.80 / 2.50 s" in out
    assert "time to all children 0.25 / 0.25 / 0.25x, p50 0.50 / 0.50 / 0.50x, p99 0.50 / 0.50 / 0.50x" in out
    # One slow run does not decide the target; it is shown beside the median.
    assert "N=500: all PyTorchJobs 10.0 s [12.0] (ok); p99 child/status 1.80 s [2.50] (ok); peak RSS 200 MB [210] (ok)" in out
