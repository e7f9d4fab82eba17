"""Loss reduction and the training step on two real gloo ranks (one torchrun launch, shared)."""

from pathlib import Path

import pytest

from mft_trainer import loss

from tests.training_processes import run_two_ranks

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return run_two_ranks(Path(__file__).with_name("dist_check.py"), tmp_path_factory.mktemp("dist"), timeout=300)


@pytest.mark.parametrize("mode", loss.MODES)
def test_global_loss_with_a_task_absent_on_one_rank_matches_hand_computation(ranks, mode):
    for rank in ranks:
        assert rank["modes"][mode]["ours"] == pytest.approx(rank["modes"][mode]["hand"], rel=1e-6)
    # Per-task losses are reduced before dividing: identical on both ranks, including the absent task.
    assert ranks[0]["modes"][mode]["task_loss"] == ranks[1]["modes"][mode]["task_loss"]


@pytest.mark.parametrize("mode", loss.MODES)
def test_gradient_accumulation_and_ranks_reproduce_one_big_batch(ranks, mode):
    """GA=2 x bs=2 == GA=1 x bs=4 == GA=4 x bs=1, on 2 ranks, == one process on all 8 rows."""
    for rank in ranks:
        entry = rank["steps"][mode]
        for layout in ("ga1_bs4", "ga2_bs2", "ga4_bs1"):
            assert entry[layout]["loss"] == pytest.approx(entry["reference_loss"], rel=1e-5)
            assert not entry[layout]["skipped"]
            assert entry[layout]["max_param_diff"] < 1e-5


def test_non_finite_loss_on_one_rank_skips_the_update_on_every_rank(ranks):
    for rank in ranks:
        assert rank["nan"] == {"skipped": True, "params_unchanged": True, "optimizer_state_empty": True}


def test_a_global_batch_without_targets_skips_the_update_with_a_plain_flag(ranks):
    # The flag is summed into the trainer state that is written as JSON: a bool, not a tensor.
    for rank in ranks:
        assert rank["no_targets"] == {"skipped": True, "skipped_type": "bool", "params_unchanged": True}
