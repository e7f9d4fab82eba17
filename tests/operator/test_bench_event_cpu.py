"""bench/operator/bench_event_cpu.py keeps running on its recorded bodies (kopf's storage API and
the renderer both move under it)."""

from __future__ import annotations

import re
import subprocess
import sys

from .helpers import ROOT


def test_event_cpu_bench_prints_both_ratios():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "operator" / "bench_event_cpu.py"),
                           "--jobs", "5", "--repeats", "1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ratios = re.findall(r"^(diff base|config YAML) .* ours/peer \(medians\) (\d+\.\d+)$", proc.stdout, re.M)
    assert [name for name, _ in ratios] == ["diff base", "config YAML"], proc.stdout
    assert all(float(ratio) > 0 for _, ratio in ratios), proc.stdout
