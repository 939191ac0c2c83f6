"""Fuzzing of the component loaders in CI (umT5, CLIP vision, VAE, LoRA, ``.pth``, node choices): every target,
fixed seed, >= 1,000 cases, each ending in success or our error naming the file, under a time and memory cap with
file opens audited (`harness`); one worker pool serves every target of the module."""

import pytest

from .harness import WorkerPool, run_target
from .targets_components import TARGETS

CASES = 1000
SEED = 13


@pytest.fixture(scope="module")
def pool():
    with WorkerPool((TARGETS["vae_file"][0].__module__,)) as shared:
        yield shared


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz_target_ends_every_case_in_success_or_our_error(name, pool):
    make_case, load = TARGETS[name]
    report = run_target(name, make_case, load, cases=CASES, seed=SEED, pool=pool)
    assert report.counts["ok"] + report.counts["our_error"] + report.counts["failure"] == CASES
    shown = "\n".join(f"  case {f.index}: {f.kind}: {f.detail}\n    {f.reproduce}" for f in report.failures[:10])
    assert not report.failures, f"{report.summary()}\n{shown}"
