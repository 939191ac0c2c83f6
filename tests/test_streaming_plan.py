"""The block-streaming schedule as a pure function: budget, block sizes and non-block weights -> which blocks stay
resident and how far ahead the streamed ones are copied."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wan_express.errors import InvalidInputError
from wan_express.models.streaming import GIB, StreamPlan, plan_streaming

# Wan 14B FP8 at real sizes: 40 blocks of 0.35 GB codes + scales, ~1.3 GB outside them (embeddings, head, bf16).
BLOCK_14B = 351_000_000
REST_14B = 1_300_000_000


def test_no_budget_or_a_large_one_keeps_every_block():
    for budget in (None, REST_14B + 40 * BLOCK_14B):
        plan = plan_streaming(budget, [BLOCK_14B] * 40, REST_14B)
        assert plan == StreamPlan(tuple(range(40)), (), 0, REST_14B + 40 * BLOCK_14B)
        assert not plan.streams


def test_a_24gb_card_budget_streams_some_blocks_spread_evenly():
    budget = int(10 * GIB)
    plan = plan_streaming(budget, [BLOCK_14B] * 40, REST_14B, prefetch=2)
    assert plan.prefetch == 2
    assert plan.peak_bytes <= budget
    # as many resident blocks as the budget holds next to three streamed ones in flight
    assert len(plan.resident) == (budget - REST_14B - 3 * BLOCK_14B) // BLOCK_14B
    assert sorted(plan.resident + plan.streamed) == list(range(40))
    gaps = [b - a for a, b in zip(plan.streamed, plan.streamed[1:])]
    assert max(gaps) - min(gaps) <= 1  # spread, so each copy hides behind resident blocks' compute


def test_prefetch_distance_shrinks_before_a_budget_is_refused():
    block, rest = 100, 50
    assert plan_streaming(rest + 3 * block, [block] * 8, rest, prefetch=2).prefetch == 2
    assert plan_streaming(rest + 2 * block, [block] * 8, rest, prefetch=2).prefetch == 1
    tight = plan_streaming(rest + block, [block] * 8, rest, prefetch=2)
    assert (tight.prefetch, tight.resident, tight.peak_bytes) == (0, (), rest + block)
    with pytest.raises(InvalidInputError, match=r"weight budget of .* GB cannot run the model: .* give it at least"):
        plan_streaming(rest + block - 1, [block] * 8, rest)


def test_ahead_lists_the_next_streamed_blocks_wrapping_into_the_next_forward():
    plan = StreamPlan(resident=(1, 3), streamed=(0, 2, 4, 5), prefetch=2, peak_bytes=0)
    assert plan.ahead(0) == [2, 4]
    assert plan.ahead(1) == [2, 4]
    assert plan.ahead(4) == [5, 0]
    assert plan.ahead(5) == [0, 2]
    assert StreamPlan((0,), (1, 2), 0, 0).ahead(0) == []
    assert StreamPlan((0,), (1,), 1, 0).ahead(1) == []  # never itself


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 1000), min_size=1, max_size=48), st.integers(0, 2000), st.integers(0, 60000),
       st.integers(0, 4))
def test_any_accepted_plan_fits_its_budget_and_covers_every_block_once(sizes, rest, budget, prefetch):
    try:
        plan = plan_streaming(budget, sizes, rest, prefetch)
    except InvalidInputError:
        assert budget < rest + max(sizes)
        return
    assert sorted(plan.resident + plan.streamed) == list(range(len(sizes)))
    assert plan.peak_bytes <= max(budget, rest + sum(sizes))
    if plan.streams:
        # what is on the device while a streamed block runs: the resident part plus prefetch + 1 streamed blocks
        largest = max(sizes[i] for i in plan.streamed)
        on_device = rest + sum(sizes[i] for i in plan.resident) + (plan.prefetch + 1) * largest
        assert on_device <= budget
        assert plan.prefetch < max(1, len(plan.streamed))
