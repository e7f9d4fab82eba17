"""Throughput accounting: FLOPs per token for full and LoRA training, and MFU from them."""

import pytest

from mft_trainer import metrics

N, LAYERS, HIDDEN, SEQ = 1_000_000, 4, 256, 512
ATTENTION = 12 * LAYERS * HIDDEN * SEQ


def test_full_training_counts_6n_and_lora_leaves_out_the_frozen_weight_gradients():
    assert metrics.flops_per_token(N, N, LAYERS, HIDDEN, SEQ) == 6 * N + ATTENTION
    adapter = 10_000
    assert metrics.flops_per_token(N + adapter, adapter, LAYERS, HIDDEN, SEQ) == 4 * (N + adapter) + 2 * adapter + ATTENTION


def test_mfu_is_the_share_of_the_peak_of_all_ranks_and_the_eta_counts_the_time_between_steps():
    now = [0.0]
    throughput = metrics.Throughput(flops_per_token=100.0, peak=1000.0, world_size=2, clock=lambda: now[0])
    throughput.add(tokens=40.0, seconds=2.0)
    now[0] = 5.0  # the step's 2 s, and 3 s of evaluation and saving
    report = throughput.report(remaining_steps=3)
    assert report["tokens_per_second"] == 20.0
    assert report["mfu"] == pytest.approx(100.0 * 20.0 / 2000.0)
    assert report["eta_seconds"] == 15.0


def test_no_mfu_without_a_known_bf16_peak():
    assert metrics.peak_flops(bf16=False) is None
    assert metrics.Throughput(flops_per_token=100.0, peak=None, world_size=1).report(0) == \
        {"tokens_per_second": None, "mfu": None, "eta_seconds": None}
