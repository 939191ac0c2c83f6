"""NaN / Inf are caught where they appear: in the latent after a sampler step (the message names the step, its
sigma and the likely causes) and in the VAE's decoded pixels; finite runs are unchanged by the checks."""

import pytest
import torch

from wan_express.errors import NonFiniteLatentError, NonFiniteOutputError
from wan_express.models.vae2_1 import VaeConfig, WanVAE21
from wan_express.models.vae2_2 import WanVAE22
from wan_express.models import WanConfig, WanDiT
from wan_express.sampling import Conditioning, DistillSchedule, FlowEuler, sample
from wan_express.synthetic import random_weights_

TINY = WanConfig("t2v", 16, 16, dim=128, ffn_dim=256, num_heads=1, num_layers=1, text_dim=32)
CAUSES = ("fp16 overflow", "LoRA", "strength", "cfg")


@pytest.fixture(scope="module")
def model():
    network = WanDiT(TINY)
    random_weights_(network, 0)
    return network.eval().requires_grad_(False)


def conditioning():
    text = torch.randn(1, 7, TINY.text_dim, generator=torch.Generator().manual_seed(1))
    return Conditioning(text, (16, 2, 4, 4), negative_context=text.flip(1))


@pytest.mark.parametrize("bad, call", [(float("nan"), 3), (float("inf"), 1)])
def test_a_non_finite_latent_names_the_step_sigma_and_causes(model, bad, call):
    schedule = DistillSchedule()
    calls = []

    def poison(module, args, output):
        calls.append(1)
        return output * bad if len(calls) == call else output

    handle = model.register_forward_hook(poison)
    try:
        with pytest.raises(NonFiniteLatentError) as caught:
            sample(model, conditioning(), schedule=schedule, seed=0)
    finally:
        handle.remove()
    sigma = schedule.sigmas()[call - 1].item()
    message = str(caught.value)
    assert f"step {call}/4" in message and f"sigma {sigma:.4g}" in message
    assert all(cause in message for cause in CAUSES)


def test_guidance_overflow_is_caught_at_its_step(model):
    with pytest.raises(NonFiniteLatentError, match=r"at step [12]/2 .*cfg"):
        sample(model, conditioning(), schedule=FlowEuler(steps=2, cfg=1e38), seed=0)
    assert torch.isfinite(sample(model, conditioning(), schedule=FlowEuler(steps=2, cfg=3.0), seed=0)).all()


@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_vae_output_with_nan_or_inf_is_an_error(version):
    vae = WanVAE21(VaeConfig("2.1", 8, 8, 16)) if version == "2.1" else WanVAE22(VaeConfig("2.2", 8, 8, 48))
    random_weights_(vae, seed=5)
    vae.eval()
    latent = torch.randn(1, vae.z_dim, 2, 2, 3, generator=torch.Generator().manual_seed(4))
    assert torch.isfinite(vae.decode(latent, tiled=False)).all()
    for bad in (float("nan"), float("inf")):
        broken = latent.clone()
        broken[0, 0, 1, 1, 1] = bad
        for tiled in (False, True):
            with pytest.raises(NonFiniteOutputError, match="VAE decode produced NaN/Inf"):
                vae.decode(broken, tiled=tiled, tile=2, overlap=1)
