"""The trainer's FSDP branches on two real gloo ranks: same steps as data parallelism, HF/peft
checkpoint files, and a resume that continues the sharded run exactly (one torchrun launch)."""

from pathlib import Path

import pytest

from tests.training_processes import run_two_ranks

pytestmark = pytest.mark.slow
MODES = ("sst", "lora")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return run_two_ranks(Path(__file__).with_name("fsdp_check.py"), tmp_path_factory.mktemp("fsdp"), timeout=600)


@pytest.mark.parametrize("mode", MODES)
def test_sharded_steps_match_data_parallel_steps(ranks, mode):
    main = ranks[0][mode]
    assert main["sharded_strategy"] == ["parallel_mode", "fsdp", "checkpoint"]
    for rank in ranks:
        for sharded, reference in zip(rank[mode]["sharded"], rank[mode]["reference"], strict=True):
            assert not sharded["skipped"]
            assert sharded["loss"] == pytest.approx(reference["loss"], rel=1e-5)
            # FSDP reduces the norm over shards: the same number as the unsharded model's.
            assert sharded["grad_norm"] == pytest.approx(reference["grad_norm"], rel=1e-4)
    assert main["sharded_vs_reference"] < 1e-5


@pytest.mark.parametrize("mode", MODES)
def test_sharded_checkpoint_holds_the_unwrapped_names(ranks, mode):
    files = ranks[0][mode]["files"]
    name = "adapter_model.safetensors" if mode == "lora" else "model.safetensors"
    assert list(files) == [name]
    # No FSDP or activation-checkpointing wrapper prefixes: the plain HF/peft model's own names.
    assert files[name] == ranks[0][mode]["expected_keys"]


@pytest.mark.parametrize("mode", MODES)
def test_resume_of_a_sharded_run_continues_it_exactly(ranks, mode):
    for rank in ranks:
        for resumed, uninterrupted in zip(rank[mode]["resumed"], rank[mode]["sharded"][-1:], strict=True):
            assert resumed["loss"] == pytest.approx(uninterrupted["loss"], rel=1e-6)
            assert resumed["grad_norm"] == pytest.approx(uninterrupted["grad_norm"], rel=1e-6)
    assert ranks[0][mode]["resumed_vs_sharded"] < 1e-6
