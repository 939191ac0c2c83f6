"""The tool nodes' parts that run without ComfyUI (the inspect summary, export names, the export itself with
interruption and refusals), the sampler's ignored-widget line, the loader's ``file`` choice, and a tooltip on every
input of the loader, sampler, LoRA and tool nodes. Inside ComfyUI: tests/test_comfyui_tools.py."""

import logging

import pytest
import torch
from safetensors import safe_open

from wan_express.errors import InvalidInputError
from wan_express.loaders import find_components, inspect, load_dit, load_text_encoder
from wan_express.loaders.export.convert import convert_dit
from wan_express.nodes.component_nodes import WanExpressTextEncode
from wan_express.nodes.dit_loader_node import ONLY_MODEL, WanExpressDiTLoader, check_file, chosen_file
from wan_express.nodes.lora_node import WanExpressLoRA
from wan_express.nodes.sampler_node import WanExpressSampler, ignored_widget
from wan_express.nodes.tool_nodes import WanExpressConvert, WanExpressInspect, export_name, report_text
from wan_express.synthetic import TINY_CONFIG, write_model_folder, write_official_folder

from .test_convert import read_file


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tools")
    single = write_model_folder(root / "Wan2.1-T2V-tiny")
    pair = root / "Wan2.2-T2V-A14B-tiny"
    write_official_folder(pair / "high_noise_model", TINY_CONFIG, seed=1)
    write_official_folder(pair / "low_noise_model", TINY_CONFIG, seed=2)
    several = root / "Several"
    several.mkdir()
    convert_dit(single, several / "tiny_bf16.safetensors", "lightx2v-bf16")
    convert_dit(single, several / "tiny_int8.safetensors", "lightx2v-int8")
    return {"single": single, "pair": pair, "several": several}


def test_the_inspect_summary_is_a_few_readable_lines(folders):
    text = report_text(inspect(folders["single"]))
    lines = text.splitlines()
    assert lines[0] == "Wan2.1-T2V-tiny: Wan2.1 T2V, custom (dim 256, 2 blocks), 2.2M parameters"
    assert lines[1] == "  layout official_folder (2 files, official key names)"
    assert lines[2] == "  precision float32 (unquantized float weights)"
    assert lines[3] == (f"components in {folders['single']}: found umT5-XXL text encoder, umT5 tokenizer, VAE; "
                        "missing none")
    assert len(lines) == 4 and "{" not in text


def test_the_summary_names_experts_choices_quantization_and_hints(folders):
    lines = report_text(inspect(folders["pair"])).splitlines()
    assert lines[0].endswith("2.2M parameters, high-noise expert") and lines[3].endswith("low-noise expert")
    assert lines[6].startswith("components in ") and lines[6].endswith("missing umT5-XXL text encoder, umT5 "
                                                                         "tokenizer, VAE")
    assert any(line.startswith("- Wan2.2 A14B: the high-noise expert runs the first steps") for line in lines)
    assert not any("not found in" in line for line in lines)  # said once, on the components line

    lines = report_text(inspect(folders["several"])).splitlines()
    assert lines[0] == "2 models in this folder; pick one with 'file':"
    assert lines[1] == ("tiny_bf16.safetensors: T2V, Wan2.1 or Wan2.2 (same shapes; the name does not say), "
                        "custom (dim 256, 2 blocks), 2.2M parameters") and lines[4].startswith("tiny_int8")
    assert lines[6].startswith("  precision int8/channel x") and lines[6].endswith("one scale per output channel)")
    assert "- 2 models in one folder are never merged: name one (tiny_bf16.safetensors, tiny_int8.safetensors)" in lines

    lines = report_text(inspect(folders["several"], "tiny_int8.safetensors")).splitlines()
    assert lines[0].startswith("tiny_int8.safetensors: T2V, ")
    assert any(line.startswith("- tiny_int8.safetensors: exported by Wan Express (lightx2v-int8") for line in lines)


def test_export_names_stay_plain_files_of_the_output_folder():
    assert export_name("my_model_fp8") == "my_model_fp8.safetensors"
    assert export_name(" merged.safetensors ") == "merged.safetensors"
    assert export_name("v1.2") == "v1.2.safetensors"
    for bad in ("", "  ", "sub/x", "..\\x", "..", "a..b", ".hidden", "/abs"):
        with pytest.raises(InvalidInputError, match="filename"):
            export_name(bad)
    assert "no folder" in WanExpressConvert.VALIDATE_INPUTS(filename="../x")
    assert WanExpressConvert.VALIDATE_INPUTS(filename="ok", file="") is True


def test_an_interrupted_export_leaves_no_file_and_keeps_an_older_one(folders, tmp_path):
    out = tmp_path / "out.safetensors"
    seen = []

    def cancel_at_5(done, total):
        seen.append((done, total))
        if done == 5:
            raise KeyboardInterrupt  # what the node's progress raises when ComfyUI is asked to stop

    with pytest.raises(KeyboardInterrupt):
        convert_dit(folders["single"], out, "lightx2v-fp8", progress=cancel_at_5)
    assert list(tmp_path.iterdir()) == [] and seen[-1][0] == 5 and seen[0][1] > 5
    out.write_bytes(b"older export")
    with pytest.raises(KeyboardInterrupt):
        convert_dit(folders["single"], out, "comfy-fp8", progress=cancel_at_5)
    assert list(tmp_path.iterdir()) == [out] and out.read_bytes() == b"older export"
    written = convert_dit(folders["several"], out, "lightx2v-bf16", file="tiny_int8.safetensors",
                          source="Several/tiny_int8.safetensors")
    assert written["loras"] == 0 and read_file(out)[1]["wan_express.source"] == "Several/tiny_int8.safetensors"


def test_an_export_refuses_a_pair_and_its_own_source(folders):
    with pytest.raises(InvalidInputError, match="two experts; convert one at a time"):
        convert_dit(folders["pair"], folders["pair"] / "x.safetensors", "lightx2v-bf16")
    source = folders["several"] / "tiny_bf16.safetensors"
    before = source.read_bytes()
    with pytest.raises(InvalidInputError, match="the model being converted"):
        convert_dit(folders["several"], source, "lightx2v-int8", file=source.name)
    assert source.read_bytes() == before
    out = folders["pair"] / "high.safetensors"
    convert_dit(folders["pair"], out, "lightx2v-bf16", file="high_noise_model/")
    with safe_open(str(out), framework="pt") as handle:
        assert handle.metadata()["wan_express.layout"] == "lightx2v-bf16"


def test_the_loaders_file_list_keeps_older_workflows_valid():
    assert chosen_file(ONLY_MODEL) is None and chosen_file("") is None and chosen_file(" a.safetensors ") == (
        "a.safetensors")
    file_spec = WanExpressDiTLoader.INPUT_TYPES()["optional"]["file"]
    assert file_spec[0] == [ONLY_MODEL] and file_spec[1]["default"] == ONLY_MODEL  # outside ComfyUI: no folders
    for node in (WanExpressDiTLoader, WanExpressInspect):
        assert node.VALIDATE_INPUTS(file="") is True and node.VALIDATE_INPUTS(file=ONLY_MODEL) is True
        assert node.VALIDATE_INPUTS() is True
    assert "not a model of any folder" in check_file("nothing.safetensors")
    assert check_file(None) is True  # linked from another node: checked when it runs


def test_every_input_of_these_nodes_has_a_tooltip():
    for node in (WanExpressDiTLoader, WanExpressSampler, WanExpressLoRA, WanExpressInspect, WanExpressConvert):
        inputs = node.INPUT_TYPES()
        for name, spec in {**inputs["required"], **inputs.get("optional", {})}.items():
            assert len(spec) == 2 and spec[1].get("tooltip"), (node.__name__, name)
    assert WanExpressInspect.OUTPUT_NODE and WanExpressConvert.OUTPUT_NODE
    assert WanExpressInspect.CATEGORY == WanExpressConvert.CATEGORY == "Wan Express/tools"


def test_the_sampler_says_which_schedule_widget_it_ignores(folders, caplog):
    optional = WanExpressSampler.INPUT_TYPES()["required"]
    assert "ignored by unipc / euler" in optional["denoising_step_list"][1]["tooltip"]
    assert "ignored by distill" in optional["steps"][1]["tooltip"]
    assert "'distill' runs denoising_step_list and ignores steps" in WanExpressSampler.DESCRIPTION
    assert ignored_widget("distill", "1000,750,500,250", 40) is None
    assert ignored_widget("unipc", "1000, 750, 500, 250", 7) is None
    assert ignored_widget("distill", "1000,500", 12) == ("schedule distill ignores steps (12); its steps are the "
                                                         "denoising_step_list")
    assert ignored_widget("euler", "1000,500", 3) == ("schedule euler ignores denoising_step_list ('1000,500'); it "
                                                      "runs the 'steps' widget's 3 steps")

    parts = find_components(folders["single"])
    encoder = load_text_encoder(parts.require("text_encoder"), parts.require("tokenizer"), dtype=torch.float32)
    (positive,) = WanExpressTextEncode().encode(encoder, "a cat")
    with caplog.at_level(logging.INFO, logger="wan_express.nodes.sampler_node"):
        WanExpressSampler().generate(load_dit(folders["single"], dtype=torch.float32), positive, width=32, height=32,
                                     length=1, seed=0, schedule="euler", denoising_step_list="1000,500", steps=2,
                                     shift=5.0, cfg=1.0, noise_source="cpu", offload_idle_expert=True)
    assert "schedule euler ignores denoising_step_list ('1000,500'); it runs the 'steps' widget's 2 steps" in (
        caplog.messages)
