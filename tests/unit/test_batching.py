"""Token-budget, length-grouped batch plans (rm_engine.finetune.batching)."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rm_engine.finetune.batching import (
    BatchPlanConfig,
    RowBatch,
    padded_tokens,
    padding_ratio,
    plan_batches,
    plan_packed,
    plan_packed_ranks,
    shard,
)


def _lengths(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [max(1, int(rng.lognormvariate(4.5, 0.8))) for _ in range(n)]


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 600), min_size=1, max_size=300),
    budget=st.integers(64, 8192),
    max_items=st.one_of(st.none(), st.integers(4, 64)),
    min_items=st.integers(1, 4),
    shuffle=st.booleans(),
    seed=st.integers(0, 10),
)
def test_plan_is_a_partition_within_budget(lengths, budget, max_items, min_items, shuffle, seed) -> None:
    cfg = BatchPlanConfig(batch_tokens=budget, max_items=max_items, min_items=min_items, window=4)
    if len(lengths) < min_items:
        with pytest.raises(ValueError, match="one per rank"):
            plan_batches(lengths, cfg, seed=seed, shuffle=shuffle)
        return
    plan = plan_batches(lengths, cfg, seed=seed, shuffle=shuffle)
    flat = [i for b in plan for i in b]
    assert sorted(flat) == list(range(len(lengths)))  # every item exactly once
    for b in plan:
        assert len(b) >= min_items
        # only a remainder (< min_items items, appended last: the longest) may push a batch over budget, or a
        # batch that had to take min_items items, or one item longer than the budget on its own
        core = b if min_items == 1 else b[: max(1, len(b) - (min_items - 1))]
        assert padded_tokens(core, lengths) <= budget or len(core) <= min_items
        if max_items is not None:
            assert len(b) <= max_items + min_items - 1


def test_plan_is_deterministic_per_seed_and_varies_across_seeds() -> None:
    lengths = _lengths(500)
    cfg = BatchPlanConfig(batch_tokens=4096, max_items=32, window=4)
    assert plan_batches(lengths, cfg, seed=3) == plan_batches(lengths, cfg, seed=3)
    assert plan_batches(lengths, cfg, seed=3) != plan_batches(lengths, cfg, seed=4)


def test_length_grouping_pads_far_less_than_random_batches() -> None:
    lengths = _lengths(2000, seed=1)
    cfg = BatchPlanConfig(batch_tokens=8192, max_items=64, window=16)
    grouped = plan_batches(lengths, cfg, seed=0)
    rng = random.Random(0)
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    naive = [idx[k : k + 16] for k in range(0, len(idx), 16)]
    assert padding_ratio(grouped, lengths) < 0.5 * padding_ratio(naive, lengths)
    assert padding_ratio(grouped, lengths) < 0.1


def test_sorted_plan_for_scoring_is_monotone_and_fills_budget() -> None:
    lengths = _lengths(300, seed=2)
    cfg = BatchPlanConfig(batch_tokens=2048, rows_per_item=1, window=0)
    plan = plan_batches(lengths, cfg, shuffle=False)
    maxes = [max(lengths[i] for i in b) for b in plan]
    assert maxes == sorted(maxes)
    for b, nxt in zip(plan, plan[1:]):  # adding the next item would have broken the budget
        longest = max(lengths[nxt[0]], max(lengths[i] for i in b))
        assert (len(b) + 1) * longest > 2048

def test_shards_partition_a_batch_and_reject_bad_ranks() -> None:
    batch = list(range(11))
    parts = [shard(batch, r, 3) for r in range(3)]
    assert sorted(i for p in parts for i in p) == batch
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1
    with pytest.raises(ValueError, match="rank 3"):
        shard(batch, 3, 3)


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="batch_tokens"):
        BatchPlanConfig(batch_tokens=0)
    with pytest.raises(ValueError, match="max_items"):
        BatchPlanConfig(batch_tokens=10, max_items=1, min_items=2)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 900), min_size=0, max_size=300),
    budget=st.integers(64, 8192),
    max_items=st.one_of(st.none(), st.integers(1, 64)),
    seed=st.integers(0, 10),
)
def test_packed_plan_is_a_greedy_partition_within_budget(sizes, budget, max_items, seed) -> None:
    plan = plan_packed(sizes, budget, max_items=max_items, seed=seed)
    assert sorted(i for b in plan for i in b) == list(range(len(sizes)))
    assert plan == plan_packed(sizes, budget, max_items=max_items, seed=seed)
    for k, b in enumerate(plan):
        used = sum(sizes[i] for i in b)
        assert used <= budget or len(b) == 1  # only a single item larger than the row may overflow it
        assert max_items is None or len(b) <= max_items
        if k + 1 < len(plan) and (max_items is None or len(b) < max_items):
            assert used + sizes[plan[k + 1][0]] > budget  # a batch closes only when the next item does not fit


def test_packed_plan_fills_rows_that_length_grouping_leaves_empty() -> None:
    """What packing buys: a packed row costs ``budget`` slots whatever it holds. Length-grouped batches (a pair =
    2 rows padded to its longer side) waste slots; real-token batches only waste each row's small tail."""
    rng = random.Random(3)
    chosen = [max(1, int(rng.lognormvariate(4.7, 0.7))) for _ in range(2000)]
    rejected = [max(1, int(c * rng.uniform(0.5, 1.5))) for c in chosen]
    longer = [max(a, b) for a, b in zip(chosen, rejected)]
    sizes = [a + b for a, b in zip(chosen, rejected)]
    real = sum(sizes)
    budget = 32768
    grouped = plan_batches(longer, BatchPlanConfig(batch_tokens=budget), seed=0)
    packed = plan_packed(sizes, budget, seed=0)
    grouped_fill = real / sum(padded_tokens(b, longer) for b in grouped)
    packed_fill = real / (budget * len(packed))
    full_rows = packed[:-1]
    assert sum(sizes[i] for b in full_rows for i in b) / (budget * len(full_rows)) > 0.98
    assert packed_fill > grouped_fill + 0.05
    # the order is random, not sorted by length: batches mix short and long pairs
    assert all(max(sizes[i] for i in b) > 2 * min(sizes[i] for i in b) for b in full_rows)


def test_packed_plan_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="budget must be positive"):
        plan_packed([3, 4], 0)
    with pytest.raises(ValueError, match="max_items"):
        plan_packed([3, 4], 10, max_items=0)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 900), min_size=4, max_size=300),
    budget=st.integers(64, 8192),
    world=st.integers(1, 4),
    max_items=st.one_of(st.none(), st.integers(1, 64)),
    seed=st.integers(0, 10),
)
def test_packed_rank_plan_gives_every_rank_a_row_every_step(sizes, budget, world, max_items, seed) -> None:
    plan = plan_packed_ranks(sizes, budget, world, max_items=max_items, seed=seed)
    assert plan == plan_packed_ranks(sizes, budget, world, max_items=max_items, seed=seed)
    assert sorted(i for step in plan for i in step) == list(range(len(sizes)))
    rows = plan_packed(sizes, budget, max_items=max_items, seed=seed)
    # every step but the last (which may be rebalanced) is a group of `world` rows of the one-process plan
    assert [r for step in plan[:-1] for r in step.rows] == rows[: (len(plan) - 1) * world]
    full, extra = divmod(len(rows), world)
    tail_items = sum(len(r) for r in rows[full * world :])
    assert len(plan) == full + (1 if extra and (tail_items >= world or full == 0) else 0)
    for step in plan:
        assert isinstance(step, RowBatch) and len(step.rows) == world and all(step.rows)
        assert sorted(step) == sorted(i for r in range(world) for i in shard(step, r, world))


def test_packed_rank_plan_rebalances_the_last_step() -> None:
    # 5 rows of one 100-token pair each, 2 ranks, budget 100: steps (r0, r1), (r2, r3), then the odd row r4 joins
    # the step before it (one item, two ranks), on its lightest row
    plan = plan_packed_ranks([100] * 5, 100, 2, seed=0)
    assert [len(step.rows) for step in plan] == [2, 2] and sorted(len(r) for r in plan[-1].rows) == [1, 2]
    # 3 rows of 3 items for 2 ranks: the last row's items are dealt out over both ranks
    plan = plan_packed_ranks([30] * 9, 90, 2, seed=0)
    assert len(plan) == 2 and sorted(sum(30 for _ in r) for r in plan[-1].rows) == [30, 60]
    # all pairs fit one row, 2 ranks: longest first, each to the lightest row (50 | 40 + 10)
    sizes = [10, 50, 40]
    plan = plan_packed_ranks(sizes, 100, 2, seed=0)
    assert len(plan) == 1 and plan[0].rows == [[1], [2, 0]]
    with pytest.raises(ValueError, match="3 pairs cannot give each of 4 ranks one"):
        plan_packed_ranks([1, 2, 3], 10, 4)
    with pytest.raises(ValueError, match="2 packed rows for a world of 3"):
        shard(plan[0], 0, 3)
