"""LoRA with the embedding layers trained in full (role markers that grow the vocabulary) under
ATorch's GPU strategy on two gloo ranks: the same steps as data parallelism, the embedding layers in
the adapter under peft's names, and an exact resume (see fsdp_added_tokens_check.py)."""

from pathlib import Path

import pytest

from tests.training_processes import run_two_ranks

from .test_fsdp import PRECISIONS, TOLERANCE

pytestmark = pytest.mark.slow
EMBEDDINGS = {"base_model.model.gpt_neox.embed_in.weight": "torch.float32",
              "base_model.model.embed_out.weight": "torch.float32"}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return run_two_ranks(Path(__file__).with_name("fsdp_added_tokens_check.py"), tmp_path_factory.mktemp("fsdp"),
                         timeout=600)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_sharded_steps_match_data_parallel_steps(ranks, precision):
    tolerance = TOLERANCE[precision]
    assert ranks[0]["vocabulary"] == 4098
    for rank in ranks:
        for sharded, reference in zip(rank["lora"][precision]["steps"], rank["lora"]["reference"], strict=True):
            assert not sharded["skipped"]
            assert sharded["loss"] == pytest.approx(reference["loss"], rel=tolerance["loss"])
            assert sharded["grad_norm"] == pytest.approx(reference["grad_norm"], rel=tolerance["grad_norm"])
    assert ranks[0]["lora"][precision]["vs_reference"] < tolerance["weights"]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_the_adapter_holds_the_embedding_layers_gathered(ranks, precision):
    files = ranks[0]["lora"][precision]["files"]
    assert files["adapter_model.safetensors"] == ranks[0]["lora"]["expected_tensors"] | EMBEDDINGS


@pytest.mark.parametrize("precision", PRECISIONS)
def test_resume_of_a_sharded_run_continues_it_exactly(ranks, precision):
    for rank in ranks:
        run = rank["lora"][precision]
        for resumed, uninterrupted in zip(run["resumed"], run["steps"][-1:], strict=True):
            assert resumed["loss"] == pytest.approx(uninterrupted["loss"], rel=1e-6)
            assert resumed["grad_norm"] == pytest.approx(uninterrupted["grad_norm"], rel=1e-6)
    assert ranks[0]["lora"][precision]["resumed_vs_uninterrupted"] < 1e-6
