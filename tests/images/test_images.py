"""The images' install logic, tested without a Docker engine: Dockerfile lint, every lock resolving for
the image's platform (linux x86_64, CPython 3.11) with nothing unpinned, and the operator image's
install script run for real into a fresh virtual environment."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ("operator", "trainer")
# pip matches platform tags exactly, so list every manylinux glibc level a wheel may declare.
PLATFORM_TAGS = [f"manylinux_2_{n}_x86_64" for n in range(5, 40)] + [
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64", "any",
]


def read_lock(path: Path) -> dict[str, str]:
    pins = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+\-]+)", line)
        assert match, f"{path}:{number}: expected NAME==VERSION, found {line!r}"
        pins[canonical(match[1])] = match[2]
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_lints_clean(image):
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(ROOT / "images" / image / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("image", IMAGES)
def test_lock_resolves_for_linux_x86_64_with_every_dependency_pinned(image, tmp_path):
    lock = ROOT / "images" / image / "requirements.lock"
    pins = read_lock(lock)
    report = tmp_path / "report.json"
    platforms = [arg for tag in PLATFORM_TAGS for arg in ("--platform", tag)]
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
         "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp", *platforms,
         "--target", str(tmp_path / "target"), "--report", str(report), "-r", str(lock)],
        check=True,
    )
    resolved = {canonical(item["metadata"]["name"]): item["metadata"]["version"]
                for item in json.loads(report.read_text())["install"]}
    assert resolved == pins, f"{lock}: the resolver wants {set(resolved.items()) ^ set(pins.items())}"


@pytest.mark.slow
def test_operator_install_script_builds_a_working_environment(tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(["bash", str(ROOT / "images" / "install.sh"), "operator", str(python), "--quiet"], check=True)
    help_text = subprocess.run([env_dir / "bin" / "mftctl", "--help"], capture_output=True, text=True, check=True).stdout
    assert "validate" in help_text and "render" in help_text
    installed = subprocess.run([python, "-m", "pip", "list", "--format=json"], capture_output=True, text=True, check=True)
    names = {canonical(p["name"]) for p in json.loads(installed.stdout)}
    assert "torch" not in names, "the operator image must not carry torch"


def docker_ignored(path: str, patterns: list[str]) -> bool:
    """Whether the build context leaves out ``path`` (relative to the root): a pattern matches it or a
    folder above it, ``*`` within one path element and ``**`` across any number of them, as Docker reads
    .dockerignore (no ``!`` exceptions are used)."""
    parts = path.split("/")
    for pattern in patterns:
        regex = "".join(".*" if piece == "**" else re.escape(piece).replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
                        for piece in re.split(r"(\*\*)", pattern.strip("/")))
        if any(re.fullmatch(regex.replace(".*/", "(.*/)?"), "/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            return True
    return False


def test_dockerignore_keeps_local_state_out_of_the_build_context_and_every_copied_file_in():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for local in (".venv/bin/python", ".cluster/kubeconfig", "runs/demo/sst/config.yaml", ".bench/x", ".whl/a.whl",
                  ".git/HEAD", ".pytest_cache/v", ".hypothesis/examples", "operator/build/lib/mft_operator/cli.py",
                  "trainer/mft_trainer.egg-info/PKG-INFO", "operator/mft_operator/__pycache__/cli.cpython-311.pyc"):
        assert docker_ignored(local, patterns), f"{local} would be sent to the Docker daemon"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for image in IMAGES:
        dockerfile = (ROOT / "images" / image / "Dockerfile").read_text()
        sources = [line.split()[1] for line in dockerfile.splitlines() if line.startswith(("COPY ", "ADD "))]
        assert sources, image
        for source in sources:
            copied = [f for f in tracked if f == source or f.startswith(source.rstrip("/") + "/")]
            assert copied, f"{image}: COPY {source} copies no tracked file"
            ignored = [f for f in copied if docker_ignored(f, patterns)]
            assert ignored == [], f"{image}: COPY {source} would miss {ignored[:5]}"

