"""ATorch's GPU strategy (FSDP, bf16 amp_native, activation checkpointing) on two real gloo ranks:
the same steps as data parallelism, HF/peft checkpoint files, a resume that continues the sharded
run exactly (one torchrun launch; see fsdp_check.py for how it runs without CUDA), and resumes
across strategies: a one-rank job's checkpoint under FSDP, and an FSDP one on one rank
(one_rank_check.py)."""

import json
import subprocess
from pathlib import Path

import pytest

from tests.training_processes import PYTHON, REPO, child_env, run_two_ranks

pytestmark = pytest.mark.slow
MODES = ("sst", "lora")
PRECISIONS = ("fp32", "bf16")
STRATEGY = {"fp32": ["parallel_mode", "fsdp", "checkpoint"],
            "bf16": ["parallel_mode", "fsdp", "amp_native", "checkpoint"]}
# fp32 sharding changes only the order of float sums; bf16 computes every layer in bf16, which moves
# losses and gradient norms in their fourth digit and the weights after three steps at lr 1e-2 by
# a few thousandths (1.9e-3 and 3.0e-3 measured).
TOLERANCE = {"fp32": {"loss": 1e-5, "grad_norm": 1e-4, "weights": 1e-5},
             "bf16": {"loss": 1e-3, "grad_norm": 5e-3, "weights": 2e-2}}


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("fsdp")


def one_rank(command: str, out: Path) -> str:
    """``one_rank_check.py command out`` as a plain process (a world of one); its last line of output."""
    proc = subprocess.run([PYTHON, str(Path(__file__).with_name("one_rank_check.py")), command, str(out)],
                          env=child_env(), capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def ranks(out):
    one_rank("save", out)  # the checkpoints of a one-rank job, which the FSDP runs resume
    return run_two_ranks(Path(__file__).with_name("fsdp_check.py"), out, timeout=600)


@pytest.fixture(scope="module")
def on_one_rank(ranks, out):
    """The FSDP runs' fp32 checkpoints, resumed by a one-rank job."""
    return json.loads(one_rank("resume", out))


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("mode", MODES)
def test_sharded_steps_match_data_parallel_steps(ranks, mode, precision):
    tolerance = TOLERANCE[precision]
    assert ranks[0][mode][precision]["strategy"] == STRATEGY[precision]
    for rank in ranks:
        for sharded, reference in zip(rank[mode][precision]["steps"], rank[mode]["reference"], strict=True):
            assert not sharded["skipped"]
            assert sharded["loss"] == pytest.approx(reference["loss"], rel=tolerance["loss"])
            # FSDP reduces the norm over shards: the same number as the unsharded model's.
            assert sharded["grad_norm"] == pytest.approx(reference["grad_norm"], rel=tolerance["grad_norm"])
    assert ranks[0][mode][precision]["vs_reference"] < tolerance["weights"]
    if precision == "bf16":  # amp_native took effect: the layers really computed in bf16
        assert ranks[0][mode][precision]["vs_reference"] > TOLERANCE["fp32"]["weights"]


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("mode", MODES)
def test_sharded_checkpoint_holds_the_unwrapped_model(ranks, mode, precision):
    files = ranks[0][mode][precision]["files"]
    name = "adapter_model.safetensors" if mode == "lora" else "model.safetensors"
    assert list(files) == [name]
    # No FSDP or activation-checkpointing wrapper prefixes, and fp32 weights under bf16 mixed
    # precision too: the plain HF/peft model's own names and dtypes.
    assert files[name] == ranks[0][mode]["expected_tensors"]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_sharded_lora_snapshot_gathers_the_adapter_alone_in_full_precision(ranks, precision):
    # The frozen base model never reaches rank 0's host memory: it is not part of the adapter file.
    snapshot = ranks[0]["lora"][precision]["snapshot"]
    assert {name.replace(".default.", "."): dtype for name, dtype in snapshot.items()} == \
        ranks[0]["lora"]["expected_tensors"]


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("mode", MODES)
def test_resume_of_a_sharded_run_continues_it_exactly(ranks, mode, precision):
    for rank in ranks:
        run = rank[mode][precision]
        for resumed, uninterrupted in zip(run["resumed"], run["steps"][-1:], strict=True):
            assert resumed["loss"] == pytest.approx(uninterrupted["loss"], rel=1e-6)
            assert resumed["grad_norm"] == pytest.approx(uninterrupted["grad_norm"], rel=1e-6)
    assert ranks[0][mode][precision]["resumed_vs_uninterrupted"] < 1e-6


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("mode", MODES)
def test_a_save_before_the_first_forward_pass_gathers_the_saved_weights(ranks, mode, precision):
    # A resumed run closing a finished epoch saves before any step. Gathering a LoRA adapter unit by
    # unit there once made an inner FSDP unit a root, and the next forward pass failed; the resumed
    # steps after this snapshot follow the uninterrupted run (the test above).
    assert ranks[0][mode][precision]["first_snapshot_vs_saved"] == 0


@pytest.mark.parametrize("mode", MODES)
def test_bf16_training_keeps_the_rotary_frequencies_in_fp32(ranks, mode):
    # FSDP's bf16 mixed precision would round inv_freq, shifting rotary angles in training only.
    buffers = ranks[0][mode]["bf16"]["buffers_while_training"]
    assert [name for name in buffers if name.endswith("rotary_emb.inv_freq")]
    assert set(buffers.values()) == {"torch.float32"}


@pytest.mark.parametrize("mode", MODES)
def test_only_rank_0_holds_the_gathered_optimizer_state(ranks, mode):
    # A full copy on every rank would take a node's host memory times its GPUs.
    assert ranks[0][mode]["fp32"]["gathered_optimizer_tensors"] > 0
    assert ranks[1][mode]["fp32"]["gathered_optimizer_tensors"] == 0


@pytest.mark.parametrize("written", ["by_name", "by_position"])
@pytest.mark.parametrize("mode", MODES)
def test_a_one_rank_checkpoint_resumes_under_fsdp_with_its_optimizer_state(ranks, mode, written):
    # A job tried on one GPU, then applied again on several. A data-parallel optimizer state was
    # keyed by position, which FSDP cannot map to its shards ("by_position": as written before it
    # was keyed by name); the state FSDP gathers after the load is the one-rank job's at its save.
    # LoRA: the adapter's parameters only, the frozen base model has none.
    assert ranks[0][mode]["from_one_rank"][written] == {"same_parameters": True, "max_diff": 0.0}


@pytest.mark.parametrize("mode", MODES)
def test_a_sharded_checkpoint_resumes_on_one_rank_with_its_optimizer_state(on_one_rank, mode):
    assert on_one_rank[mode] == {"same_parameters": True, "max_diff": 0.0}

