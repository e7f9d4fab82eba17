"""The shipped sample data: reproducible from its script, small, and valid."""

import importlib.util

from data_fixtures import EXAMPLES


def test_generate_reproduces_the_committed_files(tmp_path):
    spec = importlib.util.spec_from_file_location("generate", EXAMPLES / "generate.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.write(tmp_path)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.jsonl"))
    committed = sorted(p.relative_to(EXAMPLES) for p in EXAMPLES.rglob("*.jsonl"))
    assert generated == committed
    for relative in committed:
        assert (tmp_path / relative).read_bytes() == (EXAMPLES / relative).read_bytes(), relative


def test_small():
    assert sum(p.stat().st_size for p in EXAMPLES.rglob("*.jsonl")) < 300_000
