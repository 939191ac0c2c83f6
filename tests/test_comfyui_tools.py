"""The tool nodes and the loader's ``file`` list in a real ComfyUI: Inspect and Convert queued through POST /prompt,
their text in the history outputs, the export written to models/diffusion_models/ and loaded by the DiT loader in a
second prompt (loader -> sampler -> SaveLatent), the refusals a user meets, and the choice of one model in a folder
holding several.

Runs only when COMFYUI_DIR points at a ComfyUI checkout (see tests/comfyui_server.py); one server for the module.
"""

from __future__ import annotations

import json
import struct
import urllib.error
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from wan_express.loaders.export.convert import convert_dit
from wan_express.nodes.dit_loader_node import ONLY_MODEL
from wan_express.synthetic import TINY_CONFIG, write_model_folder, write_official_folder

from .comfyui_server import requires_comfyui, running_comfyui
from .test_comfyui_native_graphs import Graph
from .test_lora_apply import extractor_lora, float_model

pytestmark = requires_comfyui

T2V_FOLDER = "Wan2.1-T2V-tiny/"
SEVERAL = "Several/"
PAIR_FOLDER = "Wan2.2-T2V-A14B-tiny/"
LORA = "tiny_distill_lora.safetensors"
WIDTH, HEIGHT, LENGTH = 64, 64, 5
# max |latent of the export - latent of the folder with the same LoRA merged at load| / max |the latter|, both int8.
# The export merges in fp32 and quantizes; the loader merges into the bf16 weights it builds, then quantizes: a
# few codes round the other way. Observed on CPU: 2.0e-3; the LoRA itself moves the latent by 1.2e-1.
EXPORT_TOLERANCE = 1e-2


@pytest.fixture(scope="module")
def comfyui(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_tools_base")
    models = base / "models" / "wan_express"
    folder = write_model_folder(models / T2V_FOLDER.rstrip("/"))
    (models / SEVERAL).mkdir()
    convert_dit(folder, models / SEVERAL / "tiny_bf16.safetensors", "lightx2v-bf16")
    convert_dit(folder, models / SEVERAL / "tiny_int8.safetensors", "lightx2v-int8")
    write_official_folder(models / PAIR_FOLDER / "high_noise_model", TINY_CONFIG, seed=1)
    write_official_folder(models / PAIR_FOLDER / "low_noise_model", TINY_CONFIG, seed=2)
    lora = base / "models" / "loras" / LORA
    lora.parent.mkdir(parents=True)
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in extractor_lora(float_model(seed=0), seed=7).items()},
              str(lora))
    with running_comfyui(base) as server:
        yield server, base


def queue(server, graph: Graph) -> dict:
    """Queue the prompt; its history entry (status and outputs)."""
    return server.run_prompt(graph.nodes)


def succeeded(server, history: dict) -> dict:
    assert history["status"]["status_str"] == "success", json.dumps(history["status"])[:4000] + server.log()[-4000:]
    return history["outputs"]


def error_of(history: dict) -> str:
    assert history["status"]["status_str"] == "error"
    (error,) = [data for event, data in history["status"]["messages"] if event == "execution_error"]
    return error["exception_message"].strip()


def rejected(server, graph: Graph) -> dict:
    """POST /prompt of a prompt that fails validation: the node errors core answers with (HTTP 400)."""
    with pytest.raises(urllib.error.HTTPError) as answer:
        server.post("/prompt", {"prompt": graph.nodes, "client_id": "wan-express-test"})
    assert answer.value.code == 400
    return json.loads(answer.value.read())["node_errors"]


def loader(graph: Graph, model: str, file: str = ONLY_MODEL, quantization: str = "auto", lora: str = "(none)") -> str:
    return graph.add("WanExpressDiTLoader", model=model, quantization=quantization, dtype="bf16", file=file,
                     lora=lora, lora_strength=1.0, lora_expert="auto", lora_2="(none)", lora_2_strength=1.0,
                     lora_2_expert="auto")


def sampled(graph: Graph, model: str, prefix: str, steps: int = 40) -> str:
    """Text encoder + sampler (distill) on ``model``'s output, saved with SaveLatent; the SaveLatent node id."""
    encoder = graph.add("WanExpressTextEncoderLoader", model=T2V_FOLDER, quantization="auto", device="cpu")
    positive = graph.add("WanExpressTextEncode", text_encoder=[encoder, 0], text="a cat")
    sampler = graph.add("WanExpressSampler", model=[model, 0], positive=[positive, 0], width=WIDTH, height=HEIGHT,
                        length=LENGTH, seed=1, schedule="distill", denoising_step_list="1000,750,500,250",
                        steps=steps, shift=5.0, cfg=1.0, noise_source="cpu", offload_idle_expert=True)
    return graph.add("SaveLatent", samples=[sampler, 0], filename_prefix=f"tools/{prefix}")


def saved_latent(base: Path, outputs: dict, node: str) -> torch.Tensor:
    (entry,) = outputs[node]["latents"]
    return load_file(str(base / "output" / entry["subfolder"] / entry["filename"]))["latent_tensor"]


def test_the_file_input_lists_the_models_of_folders_holding_several(comfyui):
    server, _ = comfyui
    info = server.get("/object_info")
    for node in ("WanExpressDiTLoader", "WanExpressInspect", "WanExpressConvert"):
        choices, options = info[node]["input"]["optional"]["file"]
        # folder by folder: Several/ (two files), then the A14B folder's experts; Wan2.1-T2V-tiny/ is one model
        assert choices == [ONLY_MODEL, "tiny_bf16.safetensors", "tiny_int8.safetensors", "high_noise_model/",
                           "low_noise_model/"] and options["default"] == ONLY_MODEL
        assert info[node]["category"].startswith("Wan Express")
    for name in ("WanExpressInspect", "WanExpressConvert"):
        assert info[name]["output_node"] and info[name]["category"] == "Wan Express/tools"


def test_inspect_shows_a_short_summary_with_paths_under_models(comfyui):
    server, base = comfyui
    graph = Graph()
    several = graph.add("WanExpressInspect", model=SEVERAL, file="tiny_int8.safetensors")
    folder = graph.add("WanExpressInspect", model=T2V_FOLDER)  # file left out: the optional input's default
    outputs = succeeded(server, queue(server, graph))
    (text,) = outputs[several]["text"]
    assert text.splitlines()[0].startswith("tiny_int8.safetensors: T2V, ")
    assert "precision int8/channel x" in text and "exported by Wan Express (lightx2v-int8" in text
    assert "components in models/wan_express/Several: found none; missing umT5-XXL text encoder" in text
    (text,) = outputs[folder]["text"]
    assert text.splitlines()[0] == "Wan2.1-T2V-tiny: Wan2.1 T2V, custom (dim 256, 2 blocks), 2.2M parameters"
    assert "components in models/wan_express/Wan2.1-T2V-tiny: found umT5-XXL text encoder" in text
    assert str(base) not in json.dumps(outputs)


def test_a_damaged_model_file_is_named_under_models_as_the_user_knows_it(comfyui):
    server, base = comfyui
    damaged = base / "models" / "diffusion_models" / "damaged.safetensors"
    damaged.parent.mkdir(parents=True, exist_ok=True)
    damaged.write_bytes(struct.pack("<Q", 999) + b"{}")  # a header length the file cannot hold
    try:
        graph = Graph()
        graph.add("WanExpressInspect", model="damaged.safetensors")
        message = error_of(queue(server, graph))
    finally:
        damaged.unlink()
    assert message.startswith("models/diffusion_models/damaged.safetensors: truncated or not a safetensors file: "
                              "the header claims 999 bytes"), message
    assert str(base) not in message


def test_convert_writes_an_export_the_loader_runs_in_a_second_prompt(comfyui):
    server, base = comfyui
    graph = Graph()
    convert = graph.add("WanExpressConvert", model=T2V_FOLDER, format="lightx2v-int8", filename="tiny_merged",
                        overwrite=False, file="", lora=LORA, lora_strength=1.0, lora_2="(none)", lora_2_strength=1.0)
    outputs = succeeded(server, queue(server, graph))
    (text,) = outputs[convert]["text"]
    assert text.startswith("wrote models/diffusion_models/tiny_merged.safetensors: lightx2v-int8, ")
    assert "1 LoRA(s) merged" in text
    written = base / "models" / "diffusion_models" / "tiny_merged.safetensors"
    with safe_open(str(written), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["wan_express.layout"] == "lightx2v-int8" and metadata["wan_express.source"] == T2V_FOLDER
    assert json.loads(metadata["wan_express.loras"])[0]["file"] == f"models/loras/{LORA}"  # named from models/ down
    assert not [p for p in written.parent.iterdir() if p.name.endswith(".partial")]

    assert "tiny_merged.safetensors" in server.get("/object_info/WanExpressDiTLoader")[
        "WanExpressDiTLoader"]["input"]["required"]["model"][0]
    graph = Graph()
    exported = sampled(graph, loader(graph, "tiny_merged.safetensors"), "export", steps=4)
    at_load = sampled(graph, loader(graph, T2V_FOLDER, quantization="int8", lora=LORA), "at_load")
    without = sampled(graph, loader(graph, T2V_FOLDER, quantization="int8"), "without_lora")
    start = len(server.log())
    outputs = succeeded(server, queue(server, graph))
    ours, reference = saved_latent(base, outputs, exported), saved_latent(base, outputs, at_load)
    assert ours.shape == (1, 16, 2, 8, 8) and torch.isfinite(ours).all()
    difference = ((ours - reference).abs().max() / reference.abs().max()).item()
    lora_effect = ((saved_latent(base, outputs, without) - reference).abs().max() / reference.abs().max()).item()
    assert difference < EXPORT_TOLERANCE < lora_effect / 10, (difference, lora_effect)
    assert "schedule distill ignores steps (4); its steps are the denoising_step_list" in server.log()[start:]


def test_convert_refuses_an_existing_file_and_names_outside_its_folder(comfyui):
    server, base = comfyui
    existing = base / "models" / "diffusion_models" / "taken.safetensors"
    existing.parent.mkdir(parents=True, exist_ok=True)
    existing.write_bytes(b"somebody's model")
    graph = Graph()
    graph.add("WanExpressConvert", model=T2V_FOLDER, format="lightx2v-bf16", filename="taken", overwrite=False)
    message = error_of(queue(server, graph))
    assert message == ("models/diffusion_models/taken.safetensors already exists; turn overwrite on to replace it, "
                       "or choose another filename")
    assert existing.read_bytes() == b"somebody's model"

    graph = Graph()
    graph.add("WanExpressConvert", model=T2V_FOLDER, format="lightx2v-bf16", filename="../escape", overwrite=True)
    (node,) = rejected(server, graph).values()
    assert "give a plain file name" in json.dumps(node["errors"])
    assert not (base / "models" / "escape.safetensors").exists()

    graph = Graph()
    graph.add("WanExpressConvert", model=PAIR_FOLDER, format="lightx2v-bf16", filename="pair", overwrite=False)
    assert "two experts; convert one at a time (models/wan_express/Wan2.2-T2V-A14B-tiny/high_noise_model" in (
        error_of(queue(server, graph)))


def test_the_loader_takes_one_model_of_a_folder_and_refuses_a_name_not_listed(comfyui):
    server, base = comfyui
    graph = Graph()
    save = sampled(graph, loader(graph, SEVERAL, file="tiny_int8.safetensors"), "several")
    assert saved_latent(base, succeeded(server, queue(server, graph)), save).shape == (1, 16, 2, 8, 8)

    graph = Graph()
    sampled(graph, loader(graph, SEVERAL, file="nothing.safetensors"), "not_listed")
    (node,) = rejected(server, graph).values()
    assert "not a model of any folder in models/wan_express/ holding several" in json.dumps(node["errors"])

    graph = Graph()
    sampled(graph, loader(graph, SEVERAL), "none_named")
    assert "holds 2 DiT models" in error_of(queue(server, graph))
