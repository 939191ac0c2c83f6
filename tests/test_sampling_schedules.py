"""Schedules: LightX2V distill sigmas/timesteps, Euler algebra, Wan2.2 expert switching, and UniPC against the
official `FlowUniPCMultistepScheduler` of the wan22 wheel (imported by file path, without the `wan` package)."""

import importlib.util
from pathlib import Path

import pytest
import torch

from wan_express.errors import InvalidInputError
from wan_express.sampling import BOUNDARY_I2V, BOUNDARY_T2V, DistillSchedule, FlowEuler, FlowUniPC

UNIPC_TOL = 1e-5  # issue: UniPC against the official scheduler on a fixed velocity field


def official_unipc_module():
    spec = importlib.util.find_spec("wan")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the reference wheel wan22 is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "utils" / "fm_solvers_unipc.py"
    module_spec = importlib.util.spec_from_file_location("_wan_official_fm_solvers_unipc", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def official_scheduler(steps: int, shift: float):
    scheduler = official_unipc_module().FlowUniPCMultistepScheduler(num_train_timesteps=1000, shift=1,
                                                                    use_dynamic_shifting=False)
    scheduler.set_timesteps(steps, device="cpu", shift=shift)
    return scheduler


@pytest.mark.parametrize("shift,sigmas", [
    (5.0, [1.0, 0.9375, 0.8333333, 0.625, 0.0]),     # spec sampling.md §2.1
    (7.0, [1.0, 0.954545, 0.875, 0.7, 0.0]),          # spec §2.4, Wan2.2 NVFP4-sparse configs
])
def test_distill_sigmas_and_float_timesteps_match_the_spec(shift, sigmas):
    schedule = DistillSchedule(shift=shift)
    got = schedule.sigmas()
    assert got.dtype == torch.float32 and got.shape == (5,)
    assert torch.allclose(got.double(), torch.tensor(sigmas, dtype=torch.float64), atol=1e-6, rtol=0)
    timesteps = schedule.timesteps()
    assert timesteps.dtype == torch.float32
    assert torch.equal(timesteps, got[:-1] * 1000)
    if shift == 5.0:
        assert timesteps.tolist() == [1000.0, 937.5, 833.3333129882812, 625.0]  # float32 values, not rounded


def test_distill_eight_step_list_gives_the_maintainers_timesteps():
    schedule = DistillSchedule(denoising_step_list=(1000, 875, 750, 625, 500, 375, 250, 125))
    expected = [1000, 972.2224, 937.5001, 892.8571, 833.3333, 750.0001, 625, 416.6667]  # spec §2.4
    assert torch.allclose(schedule.timesteps().double(), torch.tensor(expected, dtype=torch.float64), atol=1e-3)


@pytest.mark.parametrize("steps", [(), (1000, 1000), (750, 1000), (1001,), (0,), (500.5,)])
def test_bad_step_lists_are_refused(steps):
    with pytest.raises(InvalidInputError):
        DistillSchedule(denoising_step_list=steps)


def test_euler_step_is_x0_plus_next_sigma_times_velocity():
    schedule = DistillSchedule()
    sigmas = schedule.sigmas().tolist()
    generator = torch.Generator().manual_seed(0)
    latent = torch.randn(1, 4, 2, 4, 6, generator=generator)
    solver = schedule.solver()
    for i in range(4):
        velocity = torch.randn(latent.shape, generator=generator)
        x0 = latent - sigmas[i] * velocity
        expected = x0 + sigmas[i + 1] * velocity
        latent_next = solver.step(latent, velocity)
        assert torch.allclose(latent_next, expected, atol=1e-6)
        assert torch.allclose(latent_next, latent + (sigmas[i + 1] - sigmas[i]) * velocity, atol=1e-6)
        latent = latent_next
    assert torch.equal(latent, x0)  # σ_N = 0: the last step returns the x0 estimate itself


def test_euler_recovers_the_clean_latent_of_an_exact_flow():
    """With the true velocity ε − x0 of a straight flow, every Euler schedule lands on x0 (the official grid
    starts at σ = 0.999, so the start is the noisy latent at that level)."""
    generator = torch.Generator().manual_seed(1)
    clean, noise = torch.randn(2, 1, 3, 2, 4, 4, generator=generator)
    for schedule in (DistillSchedule(), FlowEuler(steps=7, shift=3.0)):
        start = schedule.sigmas()[0].item()
        latent, solver = (1 - start) * clean + start * noise, schedule.solver()
        for _ in range(schedule.num_steps):
            latent = solver.step(latent, noise - clean)
        assert torch.allclose(latent, clean, atol=1e-5)


def test_euler_update_of_a_bf16_latent_runs_in_fp32():
    """LightX2V's step_post: the bf16 latent is widened, updated in fp32 (the loop stores it back as bf16)."""
    latent = torch.randn(1, 2, 1, 2, 2, generator=torch.Generator().manual_seed(2))
    velocity = torch.randn(latent.shape, generator=torch.Generator().manual_seed(3))
    stepped = DistillSchedule().solver().step(latent.bfloat16(), velocity)
    assert stepped.dtype == torch.float32
    assert torch.equal(stepped, latent.bfloat16().float() - 1.0 * velocity + 0.9375 * velocity)


def test_distill_expert_switch_follows_boundary_step_index():
    assert DistillSchedule().expert_steps(BOUNDARY_T2V) == [0, 0, 1, 1]
    assert DistillSchedule(boundary_step_index=1).expert_steps(BOUNDARY_I2V) == [0, 1, 1, 1]
    with pytest.raises(InvalidInputError):
        DistillSchedule(boundary_step_index=5)


@pytest.mark.parametrize("shift,boundary,high_steps,last_high,first_low", [
    (12.0, BOUNDARY_T2V, 26, 877, 865),   # Wan2.2 T2V-A14B, spec §3.2
    (5.0, BOUNDARY_I2V, 15, 902, 892),    # Wan2.2 I2V-A14B
])
def test_multistep_expert_switch_uses_truncated_timesteps(shift, boundary, high_steps, last_high, first_low):
    for schedule_class in (FlowUniPC, FlowEuler):
        schedule = schedule_class(steps=40, shift=shift)
        plan = schedule.expert_steps(boundary)
        assert plan == [0] * high_steps + [1] * (40 - high_steps)
        timesteps = schedule.timesteps()
        assert timesteps[0].item() == 999
        assert (timesteps[high_steps - 1].item(), timesteps[high_steps].item()) == (last_high, first_low)
    assert FlowUniPC(steps=40, shift=shift, boundary=0.5).expert_steps(boundary) != plan  # explicit boundary wins


def test_per_expert_guidance():
    schedule = FlowUniPC(steps=40, shift=12.0, cfg=4.0, cfg_low=3.0)
    assert (schedule.guidance(0), schedule.guidance(1)) == (4.0, 3.0)
    assert FlowUniPC(cfg=3.5).guidance(1) == 3.5


@pytest.mark.parametrize("steps,shift", [(50, 5.0), (40, 12.0), (4, 5.0), (1, 3.0)])
def test_unipc_grid_equals_the_official_scheduler(steps, shift):
    official = official_scheduler(steps, shift)
    schedule = FlowUniPC(steps=steps, shift=shift)
    assert torch.equal(schedule.timesteps(), official.timesteps)
    assert torch.equal(schedule.sigmas(), official.sigmas)
    if steps == 4:
        assert schedule.timesteps().tolist() == [999, 937, 833, 624]  # spec §4.2


@pytest.mark.parametrize("steps,shift", [(40, 12.0), (50, 5.0), (8, 5.0), (3, 3.0), (2, 5.0)])
def test_unipc_trajectory_matches_the_official_scheduler(steps, shift):
    """A fixed, non-linear velocity field, so that predictor and corrector orders all matter."""
    generator = torch.Generator().manual_seed(steps)
    clean = torch.randn(1, 4, 3, 6, 8, generator=generator)
    noise = torch.randn(1, 4, 3, 6, 8, generator=generator)

    def velocity_field(latent, timestep):
        sigma = float(timestep) / 1000
        return noise - clean + 0.3 * torch.sin(2 * latent) * sigma + 0.1 * latent * (1 - sigma)

    official = official_scheduler(steps, shift)
    expected = noise.clone()
    for t in official.timesteps:
        expected = official.step(velocity_field(expected, t), t, expected, return_dict=False)[0]
    schedule = FlowUniPC(steps=steps, shift=shift)
    latent, solver = noise.clone(), schedule.solver()
    for t in schedule.timesteps():
        latent = solver.step(latent, velocity_field(latent, t))
    error = (latent - expected).abs().max().item()
    assert error <= UNIPC_TOL, error
