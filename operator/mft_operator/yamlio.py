"""YAML in and out, in one place.

PyYAML follows YAML 1.1, whose float pattern needs a dot: ``learningRate: 2e-4`` would load
as the string ``"2e-4"``. Kubernetes (sigs.k8s.io/yaml) reads it as a number, so every
loader here resolves floats the YAML 1.2 way.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

import yaml

_FLOAT_1_2 = re.compile(
    r"""^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 floats (``2e-4`` is a number)."""


# Integers keep their own resolver (it is registered first and wins for "42").
Loader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for key, resolvers in Loader.yaml_implicit_resolvers.copy().items()
}
Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_1_2, list("-+0123456789."))


# libyaml's emitter writes the same text about four times faster than PyYAML's own; the
# operator writes a trainer config for every job it starts.
_SafeDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class Dumper(_SafeDumper):
    """Block style, insertion order, and multi-line strings as literal blocks."""


def _represent_str(dumper: Any, value: str) -> yaml.Node:
    if "\n" in value:
        style = "|"
    elif _FLOAT_1_2.match(value):
        style = "'"  # PyYAML leaves "2e-4" plain, which YAML 1.2 readers (Kubernetes, ours) take for a number
    else:
        style = None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


Dumper.add_representer(str, _represent_str)


def load(text: str) -> Any:
    return yaml.load(text, Loader=Loader)


def load_all(text: str) -> Iterator[Any]:
    """Documents of a multi-document stream; empty documents are skipped."""
    return (doc for doc in yaml.load_all(text, Loader=Loader) if doc is not None)


def load_file(path: str | Path) -> Any:
    return load(Path(path).read_text(encoding="utf-8"))


def dump(value: Any) -> str:
    return yaml.dump(value, Dumper=Dumper, sort_keys=False, default_flow_style=False, width=120)


def dump_all(values: list[Any]) -> str:
    return yaml.dump_all(values, Dumper=Dumper, sort_keys=False, default_flow_style=False, width=120)
