"""Our DiT as a core MODEL inside the real ComfyUI's model manager: core LoRA patches on FP8 / INT8 codes equal our
own merge, lowvram streaming equals the full load, unpatching restores the codes, sizes are the real ones, and a
sampler run, a VAE decode and a second sampler run share memory without reading the weights from disk again.

Runs only when COMFYUI_DIR points at a ComfyUI checkout (COMFYUI_PYTHON: its interpreter). The checks run inside
that interpreter with ComfyUI's own modules (`comfy.sd.load_lora_for_models` is LoraLoaderModelOnly's body,
`load_models_gpu` is what every core sampler calls), on CPU, in a temporary base directory.
"""

import json
import os
import subprocess

import pytest
import torch
from safetensors.torch import save_file

from wan_express.models import WanConfig
from wan_express.synthetic import write_official_folder, write_vae

from .comfyui_server import COMFYUI_DIR, COMFYUI_PYTHON, PACK_ROOT, requires_comfyui
from .test_lora_apply import extractor_lora, float_model

pytestmark = requires_comfyui

# ComfyUI's Wan detection hard-codes text_dim 4096 and 128-wide heads; everything else tiny.
TINY = WanConfig("t2v", 16, 16, dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=4096)
STRENGTH = 0.8

NATIVE_SCRIPT = r"""
import json, sys
import torch
from comfy.cli_args import args
args.cpu = not torch.cuda.is_available()  # a GPU run (the device check) uses the card
args.base_directory = sys.argv[1]
import comfy.model_management as mm
import comfy.sd
import comfy.utils

from wan_express.kernels.quantize import quantize_weight
from wan_express.kernels.quantized import QuantLinear
from wan_express.loaders import load_planned, plan_dit
from wan_express.loaders.lora import LoraSpec, load_loras, merge_loras
from wan_express.nodes import host
from wan_express.nodes.native import NativeOps, NativeWanDiT, core_model, network_of
from wan_express.loaders.vae import load_vae

folder, lora_file, vae_file, strength = sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])
torch.manual_seed(0)
dev = mm.get_torch_device()
x = torch.randn(1, 16, 2, 4, 6).to(dev)
context = (torch.randn(1, 512, 4096) * 0.1).to(dev)
sigma = torch.tensor([0.6]).to(dev)
report = {}


def build(quantization, device="cpu"):
    return load_planned(plan_dit(folder, quantization=quantization), dtype=torch.float32, ops_factory=NativeOps,
                        model_class=NativeWanDiT, device=device)


def quantized(model):
    return {name: module for name, module in model.named_modules() if isinstance(module, QuantLinear)}


for quantization in ("fp8", "int8"):
    dit = build(quantization)
    patcher = core_model(dit)
    state = dit.state_dict()
    entry = {"class": type(patcher.model).__name__, "latent_format": type(patcher.model.latent_format).__name__,
             "model_size": mm.module_size(patcher.model.diffusion_model),
             "state_dict_bytes": sum(t.numel() * t.element_size() for t in state.values()),
             "fp32_bytes": sum(t.numel() * 4 for k, t in state.items() if not k.endswith("weight_scale")),
             "quantized_elements": sum(t.numel() for t in state.values() if t.element_size() == 1)}
    layers = quantized(dit)
    originals = {name: module.weight.detach().clone() for name, module in layers.items()}
    mm.load_models_gpu([patcher], force_full_load=True)
    with torch.no_grad():
        plain = patcher.model.apply_model(x, sigma, c_crossattn=context)

    # core's LoraLoaderModelOnly, merged by core's full load into our codes (convert_weight / set_weight)
    lora = comfy.utils.load_torch_file(lora_file)
    patched, _ = comfy.sd.load_lora_for_models(patcher, None, lora, strength, 0)
    entry["patched_keys"] = len(patched.patches)
    mm.load_models_gpu([patched], force_full_load=True)
    core_weights = {name: module.dequantized_weight() for name, module in layers.items()}
    core_codes = {name: (module.weight.detach().clone(), module.scale.detach().clone())
                  for name, module in layers.items()}
    core_biases = {name: module.bias.detach().clone() for name, module in layers.items()}
    with torch.no_grad():
        core_out = patched.model.apply_model(x, sigma, c_crossattn=context)

    # our own merge of the same LoRA into an identical model (dequantize -> add -> re-quantize, fresh scales)
    reference = build(quantization, dev)
    merge_loras(reference, load_loras([LoraSpec(lora_file, strength)]))
    ours = quantized(reference)
    errors, steps, codes_differ, total = [], [], 0, 0
    for name, module in layers.items():
        want = ours[name].dequantized_weight()
        errors.append((core_weights[name] - want).abs().max().item())
        steps.append(ours[name].weight_scale.max().item())
        codes_differ += int((module.weight != ours[name].weight).sum())
        total += module.weight.numel()
    entry["weight_max_abs_diff"] = max(errors)
    entry["weight_max_step"] = max(steps)
    entry["codes_differing"] = codes_differ / total
    entry["bias_max_abs_diff"] = max((core_biases[n] - ours[n].bias).abs().max().item() for n in layers)
    with torch.no_grad():
        ours_out = reference(x, sigma * 1000, context)
        want = x - ours_out * sigma
    entry["output_rel_l2"] = ((core_out - want).norm() / want.norm()).item()
    entry["lora_changed_output_rel_l2"] = ((core_out - plain).norm() / plain.norm()).item()

    # lowvram streaming (LowVramPatch -> convert_weight, calculate_weight, set_weight(return_weight=True))
    mm.unload_all_models()
    entry["restored_bit_exact"] = all(torch.equal(layers[n].weight, originals[n]) for n in layers) and all(
        layers[n].scale is layers[n].weight_scale for n in layers)
    patched.patch_model(device_to=dev, lowvram_model_memory=1)
    entry["lowvram_patches"] = patched.model.lowvram_patch_counter
    entry["lowvram_streamed_layers"] = sum(bool(m.weight_function) for m in layers.values())
    equal = differing = 0
    for name, module in layers.items():  # what a streamed call computes with: the patched weight, quantized
        streamed, _ = module._cast(dev, module.weight.dtype)
        codes, scale = quantize_weight(streamed.float(), module.scheme)
        want_codes, want_scale = (tensor.to(dev) for tensor in core_codes[name])
        equal += int((codes == want_codes).sum())
        differing += int((codes != want_codes).sum()) + int((scale != want_scale).sum())
    entry["lowvram_codes_differing"] = differing / max(equal, 1)
    with torch.no_grad():
        patched.model.apply_model(x, sigma, c_crossattn=context)
    patched.unpatch_model(patched.offload_device)
    entry["restored_after_lowvram"] = all(torch.equal(layers[n].weight, originals[n]) for n in layers)
    report[quantization] = entry

# the pack's LoRA node: every key style our reader knows (here LightX2V's, modulation deltas included) on FP8
from wan_express.nodes.lora_node import WanExpressLoRA
node_lora = sys.argv[6]
dit = build("fp8")
patcher = core_model(dit)
node_model, _, node_report = WanExpressLoRA().apply(patcher, node_lora.rsplit("/", 1)[1], strength, "auto")["result"]
mm.load_models_gpu([node_model], force_full_load=True)
with torch.no_grad():
    node_out = node_model.model.apply_model(x, sigma, c_crossattn=context)
reference = build("fp8", dev)
merge_loras(reference, load_loras([LoraSpec(node_lora, strength)]))
with torch.no_grad():
    want = x - reference(x, sigma * 1000, context) * sigma
mm.unload_all_models()
untouched = build("fp8")
report["lora_node"] = {
    "report": node_report, "output_rel_l2": ((node_out - want).norm() / want.norm()).item(),
    "base_restored": all(torch.equal(a, b) for a, b in zip(dit.state_dict().values(),
                                                           untouched.state_dict().values())),
}
# live mode: the low-rank pairs run beside the FP8 codes, which stay as stored; the library's attach_loras is the same
from wan_express.loaders.lora import attach_loras
live_dit = build("fp8")
live_model, _, live_report = WanExpressLoRA().apply(core_model(live_dit), node_lora.rsplit("/", 1)[1], strength,
                                                    "auto", mode="live")["result"]
codes_before = {n: m.weight.detach().clone() for n, m in quantized(live_dit).items()}
mm.load_models_gpu([live_model], force_full_load=True)
with torch.no_grad():
    live_out = live_model.model.apply_model(x, sigma, c_crossattn=context)
codes_kept = all(torch.equal(m.weight.cpu(), codes_before[n]) for n, m in quantized(live_dit).items())
mm.unload_all_models()
attached = build("fp8", dev)
attach_loras(attached, load_loras([LoraSpec(node_lora, strength)]))
with torch.no_grad():
    want_live = x - attached(x, sigma * 1000, context) * sigma
report["lora_node"].update(live_report=live_report, live_codes_kept=codes_kept,
                           live_rel_l2=((live_out - want_live).norm() / want_live.norm()).item(),
                           live_vs_merge_rel_l2=((live_out - node_out).norm() / node_out.norm()).item())

# a pair: the file name routes it to the high-noise expert only
high, low = core_model(build("fp8")), core_model(build("fp8"))
routed_high, routed_low, pair_report = WanExpressLoRA().apply(high, node_lora.rsplit("/", 1)[1], strength, "auto",
                                                              model_low=low)["result"]
report["lora_node"].update(pair_report=pair_report, high_patched=len(routed_high.patches),
                           low_is_unchanged=routed_low is low)

# a model loaded by core's own loader (core's WanModel) driven by our sampler through network_of
from wan_express.sampling import DistillSchedule, sample, text_to_video
core_loaded = comfy.sd.load_diffusion_model(sys.argv[7])
network = network_of(core_loaded)
mm.load_models_gpu([core_loaded])
with torch.no_grad():
    velocity = network(x, sigma * 1000, context)
    denoised = core_loaded.model.apply_model(x, sigma, c_crossattn=context)
    latent = sample(network, text_to_video(context[:, :16], width=48, height=32, frames=5),
                    schedule=DistillSchedule(), seed=1)
report["core_loaded"] = {"network": type(core_loaded.model.diffusion_model).__module__,
                         "config": [network.config.model_type, network.config.dim, network.config.num_layers],
                         "apply_model_rel_err": ((x - velocity * sigma - denoised).norm() / denoised.norm()).item(),
                         "sampled_finite": bool(torch.isfinite(latent).all()), "latent": list(latent.shape)}
mm.unload_all_models()

# memory sharing: DiT run, VAE decode, DiT again, all through load_models_gpu, with every file open recorded
opened = []
sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == "open" and isinstance(args[0], str)
                 and (args[0].startswith(folder) or args[0] == vae_file) else None)
dit = build("fp8")
patcher = core_model(dit)
vae = host.managed(load_vae(vae_file), "vae")
opened.clear()
network = network_of(patcher)
with torch.no_grad():
    host.load_models([patcher], (16, 2, 4, 6))
    first = network(x, sigma * 1000, context[:, :32])
    host.bring(vae)
    vae.decode(first[:, :, :1])
    host.load_models([patcher], (16, 2, 4, 6))
    second = network(x, sigma * 1000, context[:, :32])
report["memory"] = {"files_opened_between_runs": sorted(set(opened)), "same_output": bool(torch.equal(first, second)),
                    "loaded_models": len(mm.current_loaded_models)}
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def native_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("native")
    folder = root / "Wan2.1-T2V-tiny"
    write_official_folder(folder, TINY, seed=3)
    lora = {k: v for k, v in extractor_lora(float_model(TINY, seed=3), seed=5, size=0.3).items()
            if not k.endswith(".diff_m")}  # modulation deltas: core has no diff_m (the pack's LoRA inputs apply them)
    lora_file = root / "lora.safetensors"
    save_file({k: v.contiguous() for k, v in lora.items()}, str(lora_file))
    vae_file = write_vae(root / "Wan2.1_VAE.pth", "2.1")
    (root / "base" / "custom_nodes").mkdir(parents=True)
    importable = root / "importable"
    importable.mkdir()
    (importable / "wan_express").symlink_to(PACK_ROOT, target_is_directory=True)
    env = dict(os.environ, PYTHONPATH=str(importable), PYTHONDONTWRITEBYTECODE="1")
    node_lora = root / "base" / "models" / "loras" / "wan_tiny_high_noise_lightx2v_lora.safetensors"
    node_lora.parent.mkdir(parents=True)
    full = extractor_lora(float_model(TINY, seed=3), seed=6, size=0.3)  # with diff_m, in LightX2V's key style
    full["diffusion_model.blocks.0.some_adapter.lora_up.weight"] = torch.zeros(4, 4)  # matches nothing
    full["diffusion_model.blocks.0.some_adapter.lora_down.weight"] = torch.zeros(4, 4)
    save_file({k: v.contiguous() for k, v in full.items()}, str(node_lora))
    core_file = root / "wan_tiny_bf16.safetensors"
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in float_model(TINY, seed=3).state_dict().items()},
              str(core_file))
    result = subprocess.run([COMFYUI_PYTHON, "-c", NATIVE_SCRIPT, str(root / "base"), str(folder), str(lora_file),
                             str(vae_file), str(STRENGTH), str(node_lora), str(core_file)], cwd=COMFYUI_DIR,
                            capture_output=True,
                            text=True,
                            timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("quantization", ["fp8", "int8"])
def test_core_lora_loader_on_quantized_models_equals_our_merge(native_report, quantization):
    entry = native_report[quantization]
    assert entry["class"] == "WAN21" and entry["latent_format"] == "Wan21"
    assert entry["patched_keys"] > 0
    # the same dequantize -> add -> re-quantize: equal up to the order of float additions (a code off by one step)
    assert entry["weight_max_abs_diff"] <= entry["weight_max_step"] + 1e-7, entry
    assert entry["codes_differing"] < 1e-3, entry
    assert entry["bias_max_abs_diff"] < 1e-6, entry  # diff_b reached the biases
    assert entry["output_rel_l2"] < 1e-3, entry
    assert entry["lora_changed_output_rel_l2"] > 1e-2, entry  # and the LoRA did change the model


@pytest.mark.parametrize("quantization", ["fp8", "int8"])
def test_unpatch_restores_codes_and_lowvram_streaming_matches_the_full_load(native_report, quantization):
    entry = native_report[quantization]
    assert entry["restored_bit_exact"] and entry["restored_after_lowvram"], entry
    assert entry["lowvram_patches"] > 0 and entry["lowvram_streamed_layers"] > 0, entry
    # lowvram hands the merged weight to each call, which quantizes it as the full load did: the same codes
    assert entry["lowvram_codes_differing"] < 1e-4, entry


@pytest.mark.parametrize("quantization", ["fp8", "int8"])
def test_the_model_reports_its_real_size_to_comfyui(native_report, quantization):
    entry = native_report[quantization]
    assert entry["model_size"] == entry["state_dict_bytes"]
    # 1-byte codes (+ fp32 row scales), not float weights
    assert entry["model_size"] < entry["fp32_bytes"] - 2 * entry["quantized_elements"], entry


def test_a_dit_run_a_vae_decode_and_a_dit_run_share_memory_without_rereading_files(native_report):
    memory = native_report["memory"]
    assert memory["files_opened_between_runs"] == [], memory
    assert memory["same_output"] and memory["loaded_models"] == 2, memory


def test_the_lora_node_applies_every_delta_reports_unmatched_keys_and_routes_by_expert(native_report):
    node = native_report["lora_node"]
    assert node["output_rel_l2"] < 1e-3, node  # modulation (diff_m) included, as our own merge does
    assert node["base_restored"], node  # the cached model is untouched once the clone unloads
    assert "modulation deltas" in node["report"] and "match nothing" in node["report"], node
    assert "some_adapter" in node["report"], node
    assert "high-noise expert" in node["pair_report"] and node["high_patched"] > 0 and node["low_is_unchanged"], node


def test_our_sampler_drives_a_model_core_loaded_itself(native_report):
    core = native_report["core_loaded"]
    assert core["network"] == "comfy.ldm.wan.model" and core["config"] == ["t2v", TINY.dim, TINY.num_layers], core
    # our call of core's network is core's own apply_model: x - v·σ is its denoised output
    assert core["apply_model_rel_err"] < 1e-3, core
    assert core["sampled_finite"] and core["latent"] == [1, 16, 2, 4, 6], core


def test_the_lora_node_live_mode_keeps_quantized_codes_and_equals_our_side_branches(native_report):
    node = native_report["lora_node"]
    assert node["live_codes_kept"] and "live side branches" in node["live_report"], node
    assert node["live_rel_l2"] < 1e-4, node  # the library's attach_loras: the same side branches
    assert node["live_vs_merge_rel_l2"] < 5e-2, node  # and within 8-bit rounding of the merged codes

