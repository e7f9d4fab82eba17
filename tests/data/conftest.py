import sys
from pathlib import Path

import pytest

# tests/ holds tokenizer_fixtures, shared with other test folders.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_fixtures import TOKENIZER_DIRS, make_config  # noqa: E402
from mft_trainer.data import load_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    return TOKENIZER_DIRS["tiny"]()


@pytest.fixture(scope="session")
def neox_dir() -> Path:
    return TOKENIZER_DIRS["neox"]()


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_dir):
    return load_tokenizer(make_config(tiny_dir))


@pytest.fixture(scope="session")
def neox_tokenizer(neox_dir):
    return load_tokenizer(make_config(neox_dir))


@pytest.fixture(scope="session", params=sorted(TOKENIZER_DIRS))
def tokenizer_dir(request) -> Path:
    """Each tokenizer in turn: the tiny BPE and GPT-NeoX-20B's."""
    return TOKENIZER_DIRS[request.param]()


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    return load_tokenizer(make_config(tokenizer_dir))
