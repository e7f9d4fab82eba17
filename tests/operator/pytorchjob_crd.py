"""The real PyTorchJob CRD, from the Kubeflow training-operator Go module (found through Go's
module cache; downloaded through the module proxy the first time)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from mft_operator import yamlio
from mft_operator.crd import openapi_schema

MODULE = "github.com/kubeflow/training-operator"
VERSION = "v1.9.4"  # the version tests/e2e/cluster runs
CRD_PATH = "manifests/base/crds/kubeflow.org_pytorchjobs.yaml"


def _go() -> str:
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").is_file() else None)
    if go is None:
        raise RuntimeError(
            f"'go' not found on PATH (nor /usr/local/go/bin/go): Go is needed to fetch the PyTorchJob CRD "
            f"from {MODULE}@{VERSION}. Install Go >= 1.26."
        )
    return go


@lru_cache(maxsize=1)
def module_dir() -> Path:
    # `go mod download` wants a module to run in; an empty throwaway one will do.
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "go.mod").write_text("module scratch\n\ngo 1.26\n")
        env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}
        result = subprocess.run(
            [_go(), "mod", "download", "-json", f"{MODULE}@{VERSION}"],
            cwd=scratch, env=env, capture_output=True, text=True,
        )
    info = json.loads(result.stdout or "{}")
    if result.returncode != 0 or "Dir" not in info:
        raise RuntimeError(f"go mod download {MODULE}@{VERSION} failed: {info.get('Error') or result.stderr.strip()}")
    return Path(info["Dir"])


@lru_cache(maxsize=1)
def pytorchjob_crd() -> dict[str, Any]:
    return yamlio.load_file(module_dir() / CRD_PATH)


def pytorchjob_schema() -> dict[str, Any]:
    return openapi_schema(pytorchjob_crd(), "v1")
