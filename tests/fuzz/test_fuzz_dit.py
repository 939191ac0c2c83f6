"""Fuzzing of the DiT-side loaders in CI: every target, fixed seed, >= 1,000 cases, each ending in success or our
error naming the file, under a time and memory cap with file opens audited (`harness`); one worker
pool serves every target of the module."""

import pytest

from .harness import WorkerPool, check_target
from .targets_dit import TARGETS


@pytest.fixture(scope="module")
def pool():
    with WorkerPool((TARGETS["dit_file"][0].__module__,)) as shared:
        yield shared


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz_target_ends_every_case_in_success_or_our_error(name, pool):
    check_target(name, TARGETS, pool)  # 1,000 cases, seed 13
