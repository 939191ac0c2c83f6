"""The sampling loop on tiny random Wan DiTs: official UniPC + CFG parity, expert switching and the offload hook,
TI2V per-token timesteps, NaN detection, interrupt, progress, noise sources, and an end-to-end tiny pipeline
(official folder -> DiT, tiny VAE -> conditioning -> sample -> decode) that is deterministic per seed."""

import pytest
import torch

from wan_express.errors import InvalidInputError, NonFiniteLatentError, SamplingInterrupted
from wan_express.loaders import load_dit
from wan_express.loaders.vae import load_vae
from wan_express.models import WanConfig, WanDiT
from wan_express.sampling import (Conditioning, DistillSchedule, FlowEuler, FlowUniPC, image_to_video,
                                  initial_noise, sample, text_to_video, ti2v_image_to_video)
from wan_express.synthetic import random_weights_, write_official_folder, write_vae

from .test_sampling_schedules import official_scheduler

TINY = dict(dim=128, ffn_dim=256, num_heads=1, num_layers=1, text_dim=32)  # 128-wide heads as released
LATENT = (16, 3, 8, 12)
PARITY_TOL = 1e-5  # relative, fp32 model: both loops run the same forward calls


def tiny_dit(model_type="t2v", in_dim=16, out_dim=16, seed=0, clip_branch=False):
    model = WanDiT(WanConfig(model_type, in_dim, out_dim, clip_branch=clip_branch, **TINY))
    random_weights_(model, seed)
    return model.eval().requires_grad_(False)


def text(seed):
    return torch.randn(1, 9, TINY["text_dim"], generator=torch.Generator().manual_seed(seed))


def t2v_conditioning(shape=LATENT, negative=True):
    return Conditioning(text(1), shape, negative_context=text(2) if negative else None)


def record_timesteps(model):
    """Timesteps each forward call of `model` receives (a forward pre-hook; the model itself runs unchanged)."""
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(args[1].clone()))
    return calls


def test_unipc_with_cfg_matches_the_official_loop():
    model, cond = tiny_dit(), t2v_conditioning()
    schedule = FlowUniPC(steps=4, shift=5.0, cfg=5.0)  # predictor and corrector orders 1, 2, 2, 1
    got = sample(model, cond, schedule=schedule, seed=7)
    # official loop: noise, then per step cond/uncond forwards, CFG, scheduler.step
    scheduler = official_scheduler(4, 5.0)
    latents = initial_noise(LATENT, 7)
    with torch.no_grad():
        for t in scheduler.timesteps:
            timestep = torch.stack([t])
            cond_v = model(latents, timestep, cond.context)
            uncond_v = model(latents, timestep, cond.negative_context)
            velocity = uncond_v + 5.0 * (cond_v - uncond_v)
            latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
    error = ((got - latents).abs().max() / latents.abs().max()).item()
    assert error <= PARITY_TOL, error


def lightx2v_distill_loop(high, low, cond, noise, boundary_step_index=2):
    """LightX2V's 4-step loop written out from spec sampling.md §2-§3: bf16 latents, fp32 `step_post` update."""
    sigmas = [1.0, 0.9375, 0.8333333333333334, 0.625, 0.0]
    latents = noise.to(torch.bfloat16)
    with torch.no_grad():
        for i in range(4):
            model = high if i < boundary_step_index else low
            t = torch.tensor([sigmas[i] * 1000.0])
            v = model(latents, t, cond.context).float()
            x0 = latents.float() - sigmas[i] * v
            latents = (x0 + sigmas[i + 1] * v if i < 3 else x0).to(torch.bfloat16)
    return latents.float()


def test_distill_pair_with_bf16_latents_matches_the_lightx2v_loop():
    high, low = tiny_dit(seed=1), tiny_dit(seed=2)
    cond = t2v_conditioning(negative=False)
    got = sample((high, low), cond, schedule=DistillSchedule(latent_dtype=torch.bfloat16), seed=3)
    expected = lightx2v_distill_loop(high, low, cond, initial_noise(LATENT, 3))
    assert torch.equal(got, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lightx2v_noise_source_is_the_lightx2v_loop_on_cuda():
    high, low = tiny_dit(seed=1).cuda(), tiny_dit(seed=2).cuda()
    cond = t2v_conditioning(negative=False)
    got = sample((high, low), cond, schedule=DistillSchedule(), seed=3, noise_source="lightx2v")
    noise = torch.randn(LATENT, generator=torch.Generator("cuda").manual_seed(3), device="cuda")[None]
    cond_cuda = Conditioning(cond.context.cuda(), LATENT)
    assert torch.equal(got, lightx2v_distill_loop(high, low, cond_cuda, noise))


def test_expert_pair_switches_after_boundary_step_index_and_calls_the_hook():
    high, low = tiny_dit(seed=1), tiny_dit(seed=2)
    high_calls, low_calls = record_timesteps(high), record_timesteps(low)
    switches = []
    sample((high, low), t2v_conditioning(), schedule=DistillSchedule(), seed=0,
           expert_hook=lambda active, idle: switches.append((active, idle)))
    assert [t.item() for t in high_calls] == [1000.0, 937.5]
    assert [round(t.item(), 3) for t in low_calls] == [833.333, 625.0]
    assert switches == [(high, low), (low, high)]


def test_multistep_expert_pair_uses_per_expert_guidance_and_the_i2v_boundary():
    high, low = tiny_dit("i2v", 36, 16, seed=1), tiny_dit("i2v", 36, 16, seed=2)
    high_calls, low_calls = record_timesteps(high), record_timesteps(low)
    schedule = FlowEuler(steps=10, shift=5.0, cfg=3.5, cfg_low=1.0)
    cond = Conditioning(text(1), (16, 1, 2, 2), negative_context=text(2), y=torch.randn(1, 20, 1, 2, 2))
    sample((high, low), cond, schedule=schedule, seed=0)  # image conditioning selects the 0.900 boundary
    timesteps = schedule.timesteps().tolist()
    high_steps = sum(t >= 900 for t in timesteps)
    assert 0 < high_steps < 10
    assert [t.item() for t in high_calls] == [t for t in timesteps[:high_steps] for _ in range(2)]  # CFG: 2 calls
    assert [t.item() for t in low_calls] == timesteps[high_steps:]  # low expert at cfg 1: one call per step


def test_wan21_i2v_cfg_keeps_image_conditioning_in_both_branches():
    model = tiny_dit("i2v", 36, 16, clip_branch=True)  # Wan2.1 I2V layout
    seen = []
    model.register_forward_pre_hook(lambda module, args, kwargs: seen.append((args[2], kwargs)), with_kwargs=True)
    y, clip = torch.randn(1, 20, 1, 2, 2), torch.randn(1, 257, 1280)
    cond = Conditioning(text(1), (16, 1, 2, 2), negative_context=text(2), y=y, clip_fea=clip)
    sample(model, cond, schedule=FlowUniPC(steps=2, cfg=5.0), seed=0)
    assert len(seen) == 4
    assert [torch.equal(context, cond.context) for context, _ in seen] == [True, False] * 2
    assert all(torch.equal(kw["y"], y) and torch.equal(kw["clip_fea"], clip) for _, kw in seen)


def test_ti2v_first_frame_gets_timestep_zero_and_stays_the_image_latent():
    model = tiny_dit("ti2v", 48, 48)
    calls = record_timesteps(model)
    shape = (48, 3, 4, 6)
    first = torch.randn(1, 48, 1, 4, 6, generator=torch.Generator().manual_seed(5))
    cond = Conditioning(text(1), shape, first_latent=first)
    out = sample(model, cond, schedule=FlowUniPC(steps=3, cfg=1.0), seed=0)
    assert torch.equal(out[:, :, :1], first)
    tokens_per_frame = 2 * 3
    assert len(calls) == 3
    for call, t in zip(calls, FlowUniPC(steps=3).timesteps()):
        assert call.shape == (1, 3 * tokens_per_frame)
        assert call[0, :tokens_per_frame].eq(0).all() and call[0, tokens_per_frame:].eq(t.float()).all()


def test_nan_in_the_latent_stops_with_the_step_named():
    model = tiny_dit()
    calls = []

    def poison_second_call(module, args, output):
        calls.append(1)
        return output * float("nan") if len(calls) == 2 else output

    model.register_forward_hook(poison_second_call)
    with pytest.raises(NonFiniteLatentError, match="step 2/4"):
        sample(model, t2v_conditioning(), schedule=DistillSchedule(), seed=0)


def test_interrupt_is_checked_before_every_model_call():
    model = tiny_dit()
    calls = record_timesteps(model)
    asked = []

    def interrupt():
        asked.append(len(calls))
        return len(asked) == 7

    with pytest.raises(SamplingInterrupted, match="step 2/3"):
        sample(model, t2v_conditioning(), schedule=FlowUniPC(steps=3, cfg=2.0), seed=0, interrupt=interrupt)
    # before each model call, and before its one block: cond, uncond, cond, stopped before step 2's uncond call
    assert asked == [0, 1, 1, 2, 2, 3, 3] and len(calls) == 3


def test_bf16_latent_storage_starts_from_bf16_noise_like_lightx2v():
    model = tiny_dit()
    inputs = []
    model.register_forward_pre_hook(lambda module, args: inputs.append(args[0].clone()))
    out = sample(model, t2v_conditioning(), schedule=DistillSchedule(latent_dtype=torch.bfloat16), seed=3)
    assert all(x.dtype == torch.bfloat16 for x in inputs) and out.dtype == torch.float32
    assert torch.equal(inputs[0], initial_noise(LATENT, 3).bfloat16())


def test_progress_reports_every_step_with_an_x0_preview():
    reports = []
    out = sample(tiny_dit(), t2v_conditioning(), schedule=DistillSchedule(), seed=3,
                 progress=lambda step, total, preview: reports.append((step, total, preview)))
    assert [(step, total) for step, total, _ in reports] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert all(preview.shape == (1, *LATENT) for _, _, preview in reports)
    assert torch.equal(reports[-1][2], out)  # the last Euler step returns the x0 estimate


def test_guidance_without_negative_context_is_refused():
    with pytest.raises(InvalidInputError, match="negative"):
        sample(tiny_dit(), t2v_conditioning(negative=False), schedule=FlowUniPC(steps=2, cfg=5.0), seed=0)


def test_noise_sources():
    assert torch.equal(initial_noise((2, 1, 2, 2), 11),
                       torch.randn(1, 2, 1, 2, 2, generator=torch.Generator().manual_seed(11)))
    with pytest.raises(InvalidInputError, match="CUDA"):
        initial_noise((2, 1, 2, 2), 11, "lightx2v", "cpu")
    with pytest.raises(InvalidInputError, match="noise source"):
        initial_noise((2, 1, 2, 2), 11, "gpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lightx2v_noise_is_the_cuda_generator_draw_without_batch_dim():
    generator = torch.Generator(device="cuda").manual_seed(11)
    expected = torch.randn(16, 3, 8, 12, generator=generator, dtype=torch.float32, device="cuda")
    assert torch.equal(initial_noise((16, 3, 8, 12), 11, "lightx2v", "cuda")[0], expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sampling_on_cuda_is_repeatable_with_both_noise_sources():
    model, cond = tiny_dit().cuda(), t2v_conditioning()
    schedule = FlowUniPC(steps=3, cfg=4.0)
    for source in ("lightx2v", "cpu"):
        first = sample(model, cond, schedule=schedule, seed=9, noise_source=source)
        assert first.device.type == "cuda" and torch.isfinite(first).all()
        assert torch.equal(first, sample(model, cond, schedule=schedule, seed=9, noise_source=source))


def write_tiny_vae(folder, version, seed):
    return write_vae(folder / f"tiny_wan{version}_vae.safetensors", version, seed=seed)


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
    return load_vae(write_tiny_vae(tmp_path_factory.mktemp("vae"), "2.1", 4))


def test_tiny_t2v_pipeline_is_deterministic_per_seed(tmp_path, tiny_vae):
    write_official_folder(tmp_path / "t2v", WanConfig("t2v", 16, 16, **TINY), seed=1)
    model = load_dit(tmp_path / "t2v", dtype=torch.float32)
    cond = text_to_video(text(1), width=64, height=32, frames=5)
    first = sample(model, cond, schedule=DistillSchedule(), seed=42)
    again = sample(model, cond, schedule=DistillSchedule(), seed=42)
    other = sample(model, cond, schedule=DistillSchedule(), seed=43)
    assert first.shape == (1, 16, 2, 4, 8) and torch.isfinite(first).all()
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 1e-2
    video = tiny_vae.decode(first)
    assert video.shape == (1, 3, 5, 32, 64) and torch.isfinite(video).all()


def test_tiny_i2v_pipeline_is_deterministic_per_seed(tmp_path, tiny_vae):
    config = WanConfig("i2v", 36, 16, clip_branch=False, **TINY)  # Wan2.2 I2V-A14B layout, no CLIP
    write_official_folder(tmp_path / "i2v", config, seed=2)
    model = load_dit(tmp_path / "i2v", dtype=torch.float32)
    image = torch.rand(3, 48, 80, generator=torch.Generator().manual_seed(0)) * 2 - 1
    cond = image_to_video(tiny_vae, image, text(1), frames=5, max_area=48 * 80)
    runs = [sample(model, cond, schedule=DistillSchedule(), seed=seed) for seed in (5, 5, 6)]
    assert runs[0].shape == (1, *cond.latent_shape) and torch.isfinite(runs[0]).all()
    assert torch.equal(runs[0], runs[1]) and (runs[0] - runs[2]).abs().max() > 1e-2


def test_tiny_ti2v_pipeline_keeps_the_image_latent_and_decodes(tmp_path):
    vae = load_vae(write_tiny_vae(tmp_path, "2.2", 5))
    write_official_folder(tmp_path / "ti2v", WanConfig("ti2v", 48, 48, **TINY), seed=3)
    model = load_dit(tmp_path / "ti2v", dtype=torch.float32)
    image = torch.rand(3, 40, 72, generator=torch.Generator().manual_seed(1)) * 2 - 1
    cond = ti2v_image_to_video(vae, image, text(1), frames=5, max_area=32 * 64)
    assert cond.latent_shape == (48, 2, 2, 4)
    runs = [sample(model, cond, schedule=FlowUniPC(steps=3, cfg=1.0), seed=seed) for seed in (5, 5, 6)]
    assert torch.equal(runs[0], runs[1]) and (runs[0] - runs[2]).abs().max() > 1e-2
    assert torch.equal(runs[0][:, :, :1], cond.first_latent) and torch.equal(runs[2][:, :, :1], cond.first_latent)
    video = vae.decode(runs[0])
    assert video.shape == (1, 3, 5, 32, 64) and torch.isfinite(video).all()


@pytest.mark.parametrize("schedule", [DistillSchedule(), FlowUniPC(steps=6, shift=5.0, cfg=1.0)])
def test_a_partial_run_starts_from_the_given_latent_noised_to_its_first_step(schedule):
    model = tiny_dit(seed=4)
    calls = record_timesteps(model)
    start = schedule.num_steps // 2
    given = torch.randn(1, *LATENT, generator=torch.Generator().manual_seed(8))
    result = sample(model, t2v_conditioning(negative=False), schedule=schedule, seed=0, init_latent=given,
                    start_step=start)
    assert [t.item() for t in calls] == pytest.approx(schedule.timesteps()[start:].float().tolist())
    assert torch.isfinite(result).all() and result.shape == (1, *LATENT)
    # the first model input is (1 - sigma) * latent + sigma * noise, with the run's own noise
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    sample(model, t2v_conditioning(negative=False), schedule=schedule, seed=0, init_latent=given, start_step=start)
    sigma = schedule.sigmas()[start].item()
    noise = initial_noise(LATENT, 0, "cpu", torch.device("cpu"))
    torch.testing.assert_close(seen[0].float(), ((1 - sigma) * given + sigma * noise).to(seen[0].dtype).float())
    with pytest.raises(InvalidInputError, match="outside the schedule"):
        sample(model, t2v_conditioning(negative=False), schedule=schedule, seed=0, start_step=schedule.num_steps)


def test_expert_switching_is_logged_as_step_ranges(caplog):
    caplog.set_level("INFO", logger="wan_express.sampling.sampler")
    sample((tiny_dit(seed=1), tiny_dit(seed=2)), t2v_conditioning(), schedule=DistillSchedule(), seed=0)
    assert any("experts high steps 1-2, low steps 3-4" in record.getMessage() for record in caplog.records)
