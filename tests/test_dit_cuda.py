"""The DiT runs on CUDA in fp32 and bf16 and agrees with the CPU fp32 result (skipped without a GPU)."""

import pytest
import torch

from wan_express.models import WanConfig, WanDiT
from wan_express.synthetic import random_weights_

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
def test_cuda_forward_matches_cpu_fp32(dtype, tolerance):
    config = WanConfig("flf2v", 36, 16, clip_branch=True, dim=256, ffn_dim=512, num_heads=2, num_layers=2,
                       text_dim=64)
    model = WanDiT(config)
    random_weights_(model, seed=4)
    state_dict = model.state_dict()
    cpu = WanDiT.from_state_dict(state_dict)
    gpu = WanDiT.from_state_dict(state_dict, dtype=dtype, device="cuda")
    generator = torch.Generator().manual_seed(5)
    inputs = dict(x=torch.randn(2, 16, 3, 6, 10, generator=generator), t=torch.tensor([900.0, 100.0]),
                  context=torch.randn(2, 9, 64, generator=generator),
                  clip_fea=torch.randn(2, 514, 1280, generator=generator),
                  y=torch.randn(2, 20, 3, 6, 10, generator=generator))
    # cuDNN convolutions (the patch embedding) default to TF32, which is not the fp32 being compared here
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        expected = cpu(**inputs)
        got = gpu(**{k: v.cuda() for k, v in inputs.items()})
    assert got.device.type == "cuda" and got.dtype == torch.float32
    error = torch.linalg.vector_norm(got.cpu() - expected) / torch.linalg.vector_norm(expected)
    assert error.item() <= tolerance
