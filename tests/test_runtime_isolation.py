"""Models built from the same files with different LoRAs or quantization never change each other: runs alternate
A, B, A, C, A, D, A (A: the base; B: a LoRA merged at load, strength 1; C: fp8 quantization; D: another LoRA
attached to A itself and detached) and every run of A, and the second run of B, is bit for bit its first."""

import torch
from safetensors.torch import save_file

from wan_express.loaders import load_dit
from wan_express.loaders.lora import LoraSpec, attach_loras, load_loras
from wan_express.sampling import Conditioning, DistillSchedule, sample
from wan_express.synthetic import TINY_CONFIG, write_official_folder

from .test_lora_apply import extractor_lora, float_model


def write_lora(path, seed):
    tensors = extractor_lora(float_model(seed=seed), seed, size=0.1)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def run(model):
    text = torch.randn(1, 7, TINY_CONFIG.text_dim, generator=torch.Generator().manual_seed(1))
    return sample(model, Conditioning(text, (16, 2, 4, 4)), schedule=DistillSchedule((1000, 500)), seed=5)


def test_alternating_loras_and_quantizations_leave_each_model_as_built(tmp_path):
    folder = tmp_path / "Wan2.1-T2V-tiny"
    write_official_folder(folder, TINY_CONFIG, seed=3)
    lora_b, lora_d = write_lora(tmp_path / "b.safetensors", 11), write_lora(tmp_path / "d.safetensors", 12)
    base = load_dit(folder, dtype=torch.float32)
    weights = {key: tensor.clone() for key, tensor in base.state_dict().items()}
    outputs = {"A": [run(base)]}
    with_lora = load_dit(folder, dtype=torch.float32, loras=[LoraSpec(lora_b, 1.0)])
    outputs["B"] = [run(with_lora)]
    outputs["A"].append(run(base))
    outputs["C"] = [run(load_dit(folder, dtype=torch.float32, quantization="fp8"))]
    outputs["A"].append(run(base))
    attachment = attach_loras(base, load_loras([LoraSpec(lora_d, 0.7)]))
    outputs["D"] = [run(base)]
    attachment.detach()
    outputs["A"].append(run(base))
    outputs["B"].append(run(with_lora))
    assert all(torch.equal(out, outputs["A"][0]) for out in outputs["A"][1:])
    assert torch.equal(outputs["B"][1], outputs["B"][0])
    assert all(not torch.equal(outputs[name][0], outputs["A"][0]) for name in "BCD")  # each variant did differ
    assert all(torch.equal(tensor, weights[key]) for key, tensor in base.state_dict().items())
