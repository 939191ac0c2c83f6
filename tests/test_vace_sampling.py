"""VACE through our sampler: the 4-step distill schedule with a LightX2V Wan2.1 T2V distill LoRA merged at load, and
the official multi-step UniPC with CFG; the VACE context reaches every model call (both CFG branches)."""

import torch

from wan_express.loaders import load_dit
from wan_express.loaders.lora import LoraSpec, load_loras, merge_loras
from wan_express.models import WanDiT
from wan_express.sampling import Conditioning, DistillSchedule, FlowUniPC, sample
from wan_express.sampling.vace import trim_references, vace_conditioning, vace_to_video
from wan_express.synthetic import write_official_folder

from .test_dit_loader_loras import write_lora
from .test_vace_model import TINY_VACE

FRAMES, HEIGHT, WIDTH = 5, 32, 32


def encode(video):
    """A stand-in for the VAE's shape contract: [3, F, H, W] -> [16, (F+3)//4, H/8, W/8] (average pooling)."""
    pooled = torch.nn.functional.avg_pool3d(video[None], (1, 8, 8))[0]
    frames = torch.cat([pooled[:, :1], pooled[:, 1:].unflatten(1, (-1, 4)).mean(2)], dim=1)
    return frames.repeat(6, 1, 1, 1)[:16]


def conditioning(strength, references=0):
    generator = torch.Generator().manual_seed(4)
    video = torch.rand(3, FRAMES, HEIGHT, WIDTH, generator=generator) * 2 - 1
    mask = torch.zeros(FRAMES, HEIGHT, WIDTH)
    mask[:, 8:24] = 1.0
    refs = [torch.rand(3, HEIGHT, WIDTH, generator=generator) * 2 - 1 for _ in range(references)]
    vace = vace_conditioning(encode, FRAMES, HEIGHT, WIDTH, frames=video, mask=mask, reference_images=refs,
                             strength=strength)
    context, negative = (torch.randn(1, 9, TINY_VACE.text_dim, generator=generator) for _ in range(2))
    return vace, vace_to_video(context, vace, negative)


def test_distill_with_a_t2v_distill_lora(tmp_path):
    folder = tmp_path / "Wan2.1-VACE-1.3B"
    write_official_folder(folder, TINY_VACE, seed=2)
    lora = write_lora(tmp_path / "wan2.1_t2v_lightx2v_4step_lora.safetensors", seed=9)
    model = load_dit(folder, dtype=torch.float32, loras=[LoraSpec(lora)])
    reference = load_dit(folder, dtype=torch.float32)
    merge_loras(reference, load_loras([LoraSpec(lora)]))
    plain = load_dit(folder, dtype=torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
    assert not torch.equal(model.blocks[0].self_attn.q.weight, plain.blocks[0].self_attn.q.weight)
    assert torch.equal(model.vace_blocks[0].self_attn.q.weight, plain.vace_blocks[0].self_attn.q.weight)

    vace, cond = conditioning(1.0, references=1)
    latent = sample(model, cond, schedule=DistillSchedule(), seed=3)
    assert latent.shape == (1, 16, 1 + 2, HEIGHT // 8, WIDTH // 8) and torch.isfinite(latent).all()
    assert trim_references(latent, vace).shape == (1, 16, 2, HEIGHT // 8, WIDTH // 8)
    _, off = conditioning(0.0, references=1)
    assert not torch.equal(latent, sample(model, off, schedule=DistillSchedule(), seed=3))


def test_multistep_cfg_reaches_both_branches_and_strength_zero_is_plain_t2v(tmp_path):
    folder = tmp_path / "vace"
    write_official_folder(folder, TINY_VACE, seed=2)
    model = load_dit(folder, dtype=torch.float32)
    calls = []
    model.register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs.get("vace_context")),
                                    with_kwargs=True)
    schedule = FlowUniPC(steps=3, shift=5.0, cfg=5.0)
    _, cond = conditioning(0.0)
    got = sample(model, cond, schedule=schedule, seed=1)
    assert len(calls) == 6 and all(c is not None for c in calls)
    base = WanDiT.from_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("vace_")})
    t2v = Conditioning(cond.context, cond.latent_shape, negative_context=cond.negative_context)
    assert torch.equal(got, sample(base, t2v, schedule=schedule, seed=1))
    _, strong = conditioning(1.0)
    assert not torch.equal(got, sample(model, strong, schedule=schedule, seed=1))
