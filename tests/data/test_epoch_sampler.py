"""EpochSampler: disjoint deterministic shares, independent of world size, exact resume, task sampling;
validation_order: every task in any capped evaluation."""

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mft_trainer.data import EpochSampler, RowDataset, validation_order


class Rows:
    def __init__(self, count: int):
        self.count = count

    def __len__(self) -> int:
        return self.count


def dataset(*sizes: int) -> RowDataset:
    return RowDataset([Rows(n) for n in sizes])


def shares(data, world_size, epoch=0, **options):
    samplers = [EpochSampler(data, rank, world_size, seed=3, **options) for rank in range(world_size)]
    for sampler in samplers:
        sampler.set_epoch(epoch)
    return [list(s) for s in samplers]


@settings(max_examples=80, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 30), min_size=1, max_size=4),
    world_size=st.integers(1, 5),
    epoch=st.integers(0, 3),
    task_sampling=st.sampled_from(["proportional", "uniform", "temperature"]),
)
def test_shares_partition_one_global_order(sizes, world_size, epoch, task_sampling):
    data = dataset(*sizes)
    total = sum(sizes)
    per_rank = shares(data, world_size, epoch, task_sampling=task_sampling, temperature=2.0)
    assert all(len(share) == -(-total // world_size) for share in per_rank)  # same length on every rank
    interleaved = [share[k] for k in range(len(per_rank[0])) for share in per_rank]
    single = shares(data, 1, epoch, task_sampling=task_sampling, temperature=2.0)[0]
    # Whatever the world size, rank shares interleave back into the single-process order (padded by repetition).
    assert interleaved == (single * world_size)[: len(interleaved)]
    if task_sampling == "proportional":
        assert sorted(single) == list(range(total))


def test_deterministic_and_changes_with_epoch_and_seed():
    data = dataset(10, 20)
    assert shares(data, 2, epoch=1) == shares(data, 2, epoch=1)
    assert shares(data, 2, epoch=1) != shares(data, 2, epoch=2)
    assert list(EpochSampler(data, 0, 1, seed=1)) != list(EpochSampler(data, 0, 1, seed=2))


def test_resume_mid_epoch():
    data = dataset(13, 7, 30)
    uninterrupted = EpochSampler(data, 1, 3, seed=5)
    uninterrupted.set_epoch(2)
    expected = list(uninterrupted)
    first = EpochSampler(data, 1, 3, seed=5)
    first.set_epoch(2)
    iterator = iter(first)
    consumed = [next(iterator) for _ in range(6)]
    state = first.state_dict()
    assert state == {"epoch": 2, "offset": 6, "world_size": 3}
    resumed = EpochSampler(data, 1, 3, seed=5)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # the loop calls it again for the epoch it resumes in: no reset
    assert consumed + list(resumed) == expected
    resumed.set_epoch(3)
    assert resumed.offset == 0 and len(list(resumed)) == len(resumed)


def test_resume_with_another_world_size_skips_nothing():
    data = dataset(40)
    old = [EpochSampler(data, rank, 2, seed=5) for rank in range(2)]
    seen = set()
    for sampler in old:
        iterator = iter(sampler)
        seen |= {next(iterator) for _ in range(6)}  # 12 global positions read
    new = [EpochSampler(data, rank, 4, seed=5) for rank in range(4)]
    for sampler in new:
        sampler.load_state_dict(old[0].state_dict())
    rest = [i for sampler in new for i in sampler]
    assert seen | set(rest) == set(range(40))
    assert len(rest) == 40 - 12  # offset 12 // 4 = 3 per rank: divisible, so nothing is read twice


def test_task_probabilities():
    data = dataset(100, 25, 0)
    temperature = EpochSampler(data, 0, 1, 0, "temperature", temperature=2.0).task_probabilities()
    assert np.allclose(temperature, [10 / 15, 5 / 15, 0])
    assert np.allclose(EpochSampler(data, 0, 1, 0, "uniform").task_probabilities(), [0.5, 0.5, 0])
    assert np.allclose(EpochSampler(data, 0, 1, 0, "temperature", temperature=1.0).task_probabilities(), [0.8, 0.2, 0])


def test_a_small_temperature_gives_finite_probabilities():
    """size ** (1/T) overflows float64 for T = 0.01 (2000 ** 100); the weights are computed in log space."""
    sampler = EpochSampler(dataset(500, 2000, 0), 0, 1, seed=0, task_sampling="temperature", temperature=0.01)
    probabilities = sampler.task_probabilities()
    assert np.isfinite(probabilities).all() and probabilities.sum() == pytest.approx(1.0)
    assert probabilities[1] == pytest.approx(1.0) and probabilities[0] == pytest.approx(0.25 ** 100, rel=1e-9)
    assert probabilities[2] == 0
    assert len(list(sampler)) == 2500


def test_uniform_sampling_repeats_small_tasks_in_cycles():
    data = dataset(1000, 10)
    order = list(EpochSampler(data, 0, 1, seed=0, task_sampling="uniform"))
    assert len(order) == 1010
    small = Counter(i for i in order if i >= 1000)
    assert 0.4 < sum(small.values()) / 1010 < 0.6
    assert max(small.values()) - min(small.values()) <= 1  # whole shuffled cycles over the small task


def test_bad_arguments():
    with pytest.raises(ValueError, match="rank: expected 0 <= rank < world_size"):
        EpochSampler(dataset(3), 2, 2, 0)
    with pytest.raises(ValueError, match="task_sampling: expected one of"):
        EpochSampler(dataset(3), 0, 1, 0, "random")
    assert list(EpochSampler(dataset(0), 0, 2, 0)) == []


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(0, 40), min_size=1, max_size=5).filter(any), seed=st.integers(0, 3))
def test_validation_order_puts_every_task_in_each_prefix_at_its_share(sizes, seed):
    order = validation_order(sizes, seed)
    assert sorted(order.tolist()) == list(range(sum(sizes)))
    assert np.array_equal(order, validation_order(sizes, seed))  # the same rows at every evaluation
    task_of = dataset(*sizes).task_of
    present = sum(1 for n in sizes if n)
    for length in range(present, sum(sizes) + 1):
        seen = Counter(task_of(int(i)) for i in order[:length])
        assert len(seen) == present  # a cap of as many rows as tasks already sees each task
        for task, n in enumerate(sizes):  # each task at its share, but for the first rows of the others
            assert -present <= seen[task] - length * n / sum(sizes) <= 1, (task, length, seen)


def test_validation_order_shuffles_each_task_by_seed():
    first, other = validation_order([50, 50], 1), validation_order([50, 50], 2)
    assert not np.array_equal(first, other)
    assert sorted(first[first < 50].tolist()) == list(range(50))  # each task's rows, in a seeded order
    assert first[first < 50].tolist() != list(range(50))

