"""Writes every example workflow of this folder: ``python workflows/build.py`` (with ``wan_express`` importable).

Each function below is one workflow: its graph, the files it needs (named in a MarkdownNote with their Hugging
Face repository and models/ folder, and as downloads the front end offers) and its settings. The JSON files are
generated, so edit the graphs here and run the script again; tests/test_comfyui_workflows.py checks that the files
are what this script writes and runs every one of them in a real ComfyUI.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from graph_json import Graph  # noqa: E402

LIGHTX2V_CONFIG = "wan22_i2v_a14b_int8_4step.json"  # shipped in workflows/lightx2v/, copied to models/wan_express/
NONE = "(none)"
DISTILL = dict(schedule="distill", denoising_step_list="1000,750,500,250", shift=5.0, cfg=1.0)
NEGATIVE = ("色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，"
            "残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
            "三条腿，背景人很多，倒着走")  # the official default negative prompt
T2V_PROMPT = ("A red fox trots through fresh snow at dawn, its breath misting; the camera tracks it at ground "
              "level.")
I2V_PROMPT = "The scene comes alive: gentle wind moves through it while the camera slowly pushes in."

# Single files picked by name: file -> (Hugging Face repository, models/ folder).
FILES = {
    "wan2.1_t2v_14b_lora_rank64_lightx2v_4step.safetensors": ("lightx2v/Wan2.1-Distill-Loras", "loras"),
    "wan2.2_i2v_A14b_high_noise_lora_rank64_lightx2v_4step_1022.safetensors": ("lightx2v/Wan2.2-Distill-Loras",
                                                                               "loras"),
    "wan2.2_i2v_A14b_low_noise_lora_rank64_lightx2v_4step_1022.safetensors": ("lightx2v/Wan2.2-Distill-Loras",
                                                                              "loras"),
    "wan2.2_t2v_A14b_high_noise_lora_rank64_lightx2v_4step_1217.safetensors": ("lightx2v/Wan2.2-Distill-Loras",
                                                                               "loras"),
    "wan2.2_t2v_A14b_low_noise_lora_rank64_lightx2v_4step_1217.safetensors": ("lightx2v/Wan2.2-Distill-Loras",
                                                                              "loras"),
    "wan2.1_t2v_14b_scaled_fp8_e4m3_lightx2v_4step.safetensors": ("lightx2v/Wan2.1-Distill-Models",
                                                                  "diffusion_models"),
    "wan2.1_i2v_480p_int8_lightx2v_4step.safetensors": ("lightx2v/Wan2.1-Distill-Models", "diffusion_models"),
    "wan2.2_i2v_A14b_high_noise_scaled_fp8_e4m3_lightx2v_4step.safetensors": ("lightx2v/Wan2.2-Distill-Models",
                                                                              "diffusion_models"),
    "wan2.2_i2v_A14b_low_noise_scaled_fp8_e4m3_lightx2v_4step.safetensors": ("lightx2v/Wan2.2-Distill-Models",
                                                                             "diffusion_models"),
    "wan2.2_i2v_A14b_high_noise_int8_lightx2v_4step.safetensors": ("lightx2v/Wan2.2-Distill-Models",
                                                                   "diffusion_models"),
    "wan2.2_i2v_A14b_low_noise_int8_lightx2v_4step.safetensors": ("lightx2v/Wan2.2-Distill-Models",
                                                                  "diffusion_models"),
}
# What each official folder needs when only its components (umT5, tokenizer, VAE, CLIP) are used.
UMT5 = "`models_t5_umt5-xxl-enc-bf16.pth`, `google/umt5-xxl/`"
CLIP = "`models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`"


def repo_link(repo: str) -> str:
    return f"[{repo}](https://huggingface.co/{repo})"


def file_row(name: str) -> tuple[str, str, str]:
    repo, folder = FILES[name]
    return f"`{name}`", repo, f"models/{folder}/"


def note(title: str, about: str, rows: list[tuple[str, str, str]], commands: list[str], settings: str) -> str:
    """The MarkdownNote text: what the workflow does, every file (repository, folder), download commands, tips."""
    files = "\n".join(f"- {what}\n  from {repo_link(repo)} into `{folder}`" for what, repo, folder in rows)
    shell = "\n".join(commands)
    return (f"## {title}\n\n{about}\n\n**Files** (folders relative to the ComfyUI folder)\n\n{files}\n\n"
            f"From the ComfyUI folder (`pip install huggingface_hub` gives `huggingface-cli`):\n\n```sh\n{shell}\n```\n\n"
            f"{settings}\n\nMore in the pack's `workflows/README.md`.")


def download(name: str) -> str:
    repo, folder = FILES[name]
    return f"huggingface-cli download {repo} {name} --local-dir models/{folder}"


def components(repo: str, *, clip: bool = False, vae: str = "Wan2.1_VAE.pth") -> tuple[tuple, str]:
    """A note row and a download command for an official folder's components only (no DiT weights)."""
    folder = f"models/wan_express/{repo.split('/')[1]}/"
    files = f"{UMT5}, `{vae}`" + (f", {CLIP}" if clip else "")
    patterns = ' '.join(f'"{p}"' for p in ["models_t5_umt5-xxl-enc-bf16.pth", "google/*", vae]
                        + (["models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"] if clip else []))
    return (files, repo, folder), f"huggingface-cli download {repo} --include {patterns} --local-dir {folder}"


def whole(repo: str, what: str) -> tuple[tuple, str]:
    folder = f"models/wan_express/{repo.split('/')[1]}/"
    return (what, repo, folder), f"huggingface-cli download {repo} --local-dir {folder}"


def text_side(g: Graph, folder: str, prompt: str, negative: bool = False, vae_title: str | None = None):
    """umT5 loader (column 0), the prompt encodes (column 1) and the VAE loader of ``folder`` (column 0); returns
    (positive, negative or None, vae)."""
    encoder = g.add("WanExpressTextEncoderLoader", 0, model=folder, quantization="auto", device="gpu")
    positive = g.add("WanExpressTextEncode", 1, "Prompt", text_encoder=encoder.out(), text=prompt)
    negative_node = (g.add("WanExpressTextEncode", 1, "Negative prompt", text_encoder=encoder.out(), text=NEGATIVE)
                     if negative else None)
    vae = g.add("WanExpressVAELoader", 0, *([vae_title] if vae_title else []), model=folder)
    return positive.out(), negative_node.out() if negative else None, vae


def dit(g: Graph, model: str, title: str, **options):
    return g.add("WanExpressDiTLoader", 0, title, model=model, quantization="auto", dtype="bf16", **options)


def finish(g: Graph, vae, latent, fps: int = 16) -> Graph:
    frames = g.add("WanExpressVAEDecode", 3, vae=vae, samples=latent)
    g.save_video(frames.out(), 3, fps)
    return g


def t2v_4step() -> Graph:
    g = Graph("wan_express_t2v_4step", "Text to video in 4 steps: the official Wan2.1 T2V-14B folder with "
              "LightX2V's Wan2.1 T2V 4-step distill LoRA merged at load.")
    lora = "wan2.1_t2v_14b_lora_rank64_lightx2v_4step.safetensors"
    row, command = whole("Wan-AI/Wan2.1-T2V-14B", "the whole folder (DiT shards + index, config.json, umT5, "
                         "tokenizer, VAE)")
    g.note(note("Wan2.1 T2V-14B, official weights + 4-step distill LoRA", "Text to video in 4 steps. The DiT "
                "loader merges LightX2V's distill LoRA into the official weights while it loads.",
                [row, file_row(lora)], [command, download(lora)],
                "Sampler: distill, 1000,750,500,250, shift 5, cfg 1. For FP8/INT8 weights set the loader's "
                "quantization (the LoRA is merged first, one rounding)."))
    model = dit(g, "Wan2.1-T2V-14B/", "DiT: official Wan2.1 T2V-14B + 4-step distill LoRA", lora=lora)
    positive, _, vae = text_side(g, "Wan2.1-T2V-14B/", T2V_PROMPT)
    latent = g.add("WanExpressSampler", 2, model=model.out("model"), positive=positive, **DISTILL)
    return finish(g, vae.out(), latent.out())


def wan22_i2v_a14b_4step() -> Graph:
    g = Graph("wan_express_wan22_i2v_a14b_4step", "Image to video with Wan2.2 I2V-A14B in 4 steps: the official "
              "folder (both experts) with LightX2V's high-noise and low-noise distill LoRAs, one per expert.")
    high = "wan2.2_i2v_A14b_high_noise_lora_rank64_lightx2v_4step_1022.safetensors"
    low = "wan2.2_i2v_A14b_low_noise_lora_rank64_lightx2v_4step_1022.safetensors"
    row, command = whole("Wan-AI/Wan2.2-I2V-A14B", "the whole folder (`high_noise_model/`, `low_noise_model/`, "
                         "umT5, tokenizer, `Wan2.1_VAE.pth`)")
    g.note(note("Wan2.2 I2V-A14B, official weights + high/low 4-step distill LoRAs", "Image to video in 4 steps. "
                "The DiT loader loads both experts from the folder (`model` = high-noise, `model_low` = "
                "low-noise) and merges each LoRA into the expert it names. No CLIP vision model (Wan2.2 has no "
                "CLIP branch).", [row, file_row(high), file_row(low)], [command, download(high), download(low)],
                "Sampler: distill, 4 steps; the high-noise expert runs steps 1-2, the low-noise expert steps 3-4. "
                "Pick your start image in Load Image."))
    model = dit(g, "Wan2.2-I2V-A14B/", "DiT: Wan2.2 I2V-A14B experts + high/low distill LoRAs", lora=high,
                lora_expert="high", lora_2=low, lora_2_expert="low")
    positive, _, vae = text_side(g, "Wan2.2-I2V-A14B/", I2V_PROMPT)
    image = g.add("LoadImage", 1, "Start image")
    latent = g.add("WanExpressSampler", 2, model=model.out("model"), model_low=model.out("model_low"),
                   positive=positive, vae=vae.out(), start_image=image.out(), **DISTILL)
    return finish(g, vae.out(), latent.out())


def t2v_lightx2v_fp8() -> Graph:
    g = Graph("wan_express_t2v_14b_lightx2v_fp8", "Text to video in 4 steps with LightX2V's distilled Wan2.1 "
              "T2V-14B in scaled FP8 (per-channel e4m3), run by the FP8 kernels.")
    model_file = "wan2.1_t2v_14b_scaled_fp8_e4m3_lightx2v_4step.safetensors"
    row, command = components("Wan-AI/Wan2.1-T2V-14B")
    g.note(note("Wan2.1 T2V-14B, LightX2V distilled FP8, 4 steps", "Text to video. The model file already is a "
                "4-step model: no LoRA. Its FP8 weights stay FP8 (quantization auto).",
                [file_row(model_file), row], [download(model_file), command],
                "Sampler: distill, 1000,750,500,250, shift 5, cfg 1. Other precisions of the same model: "
                "`wan2.1_t2v_14b_lightx2v_4step.safetensors` (bf16), `..._int8_lightx2v_4step.safetensors`, "
                "`..._scaled_fp8_e4m3_lightx2v_4step_comfyui.safetensors`."))
    model = dit(g, model_file, "DiT: LightX2V Wan2.1 T2V-14B FP8 (4-step)")
    positive, _, vae = text_side(g, "Wan2.1-T2V-14B/", T2V_PROMPT)
    latent = g.add("WanExpressSampler", 2, model=model.out("model"), positive=positive, **DISTILL)
    return finish(g, vae.out(), latent.out())


def i2v_480p_int8() -> Graph:
    g = Graph("wan_express_i2v_480p_lightx2v_int8", "Image to video in 4 steps with LightX2V's distilled Wan2.1 "
              "I2V-14B-480P in INT8 (per-channel), with the CLIP vision features of the start image.")
    model_file = "wan2.1_i2v_480p_int8_lightx2v_4step.safetensors"
    row, command = components("Wan-AI/Wan2.1-I2V-14B-480P", clip=True)
    g.note(note("Wan2.1 I2V-14B-480P, LightX2V distilled INT8, 4 steps", "Image to video at 832x480. Wan2.1 "
                "image models need the CLIP vision features of the start image (CLIP Vision Loader + Encode); "
                "ComfyUI's `clip_vision_h.safetensors` in `models/clip_vision/` works too.",
                [file_row(model_file), row], [download(model_file), command],
                "Sampler: distill, 1000,750,500,250, shift 5, cfg 1; width x height sets the area, the image "
                "sets the aspect. Pick your start image in Load Image."))
    model = dit(g, model_file, "DiT: LightX2V Wan2.1 I2V-14B-480P INT8 (4-step)")
    positive, _, vae = text_side(g, "Wan2.1-I2V-14B-480P/", I2V_PROMPT)
    clip = g.add("WanExpressCLIPVisionLoader", 0, model="Wan2.1-I2V-14B-480P/")
    image = g.add("LoadImage", 1, "Start image")
    features = g.add("WanExpressCLIPVisionEncode", 1, clip_vision=clip.out(), start_image=image.out())
    latent = g.add("WanExpressSampler", 2, model=model.out("model"), positive=positive, vae=vae.out(),
                   start_image=image.out(), clip_vision_output=features.out(), **DISTILL)
    return finish(g, vae.out(), latent.out())


def flf2v_720p() -> Graph:
    g = Graph("wan_express_flf2v_720p", "First-last-frame to video with the official Wan2.1 FLF2V-14B-720P: 50 "
              "UniPC steps with CFG 5 and the official negative prompt.")
    row, command = whole("Wan-AI/Wan2.1-FLF2V-14B-720P", "the whole folder (DiT shards + index, config.json, "
                         "umT5, tokenizer, CLIP, `Wan2.1_VAE.pth`)")
    g.note(note("Wan2.1 FLF2V-14B-720P, start + end image, official sampling", "The video starts at the first "
                "image and ends at the second. The CLIP features of both images go to the model (514 tokens).",
                [row], [command],
                "Sampler: unipc, 50 steps, shift 16, cfg 5 with the negative prompt (the official FLF2V "
                "settings), 1280x720, 81 frames. No distilled FLF2V model exists; it is the slowest workflow here."))
    model = dit(g, "Wan2.1-FLF2V-14B-720P/", "DiT: official Wan2.1 FLF2V-14B-720P")
    positive, negative, vae = text_side(g, "Wan2.1-FLF2V-14B-720P/", "The camera glides from the first view to the "
                                   "last one in one smooth move.", negative=True)
    clip = g.add("WanExpressCLIPVisionLoader", 0, model="Wan2.1-FLF2V-14B-720P/")
    start = g.add("LoadImage", 1, "First frame")
    end = g.add("LoadImage", 1, "Last frame", image="example_end.png")
    features = g.add("WanExpressCLIPVisionEncode", 2, clip_vision=clip.out(), start_image=start.out(),
                     end_image=end.out())
    latent = g.add("WanExpressSampler", 2, model=model.out("model"), positive=positive, negative=negative,
                   vae=vae.out(), start_image=start.out(), end_image=end.out(), clip_vision_output=features.out(),
                   width=1280, height=720, schedule="unipc", steps=50, shift=16.0, cfg=5.0)
    return finish(g, vae.out(), latent.out())


def wan22_i2v_lightx2v_fp8() -> Graph:
    g = Graph("wan_express_wan22_i2v_a14b_lightx2v_fp8", "Image to video with LightX2V's distilled Wan2.2 "
              "I2V-A14B experts in scaled FP8: two single files, one DiT loader each.")
    high = "wan2.2_i2v_A14b_high_noise_scaled_fp8_e4m3_lightx2v_4step.safetensors"
    low = "wan2.2_i2v_A14b_low_noise_scaled_fp8_e4m3_lightx2v_4step.safetensors"
    row, command = components("Wan-AI/Wan2.2-I2V-A14B")
    g.note(note("Wan2.2 I2V-A14B, LightX2V distilled FP8 experts, 4 steps", "Two single files, the high-noise and "
                "the low-noise expert, each loaded by its own DiT loader: the high-noise `model` goes to the "
                "sampler's `model`, the low-noise `model` to its `model_low`. (A LightX2V config JSON naming both "
                "files loads the pair in one loader: see the lightx2v_config workflow.)",
                [file_row(high), file_row(low), row], [download(high), download(low), command],
                "Sampler: distill, 4 steps, high-noise expert for steps 1-2. Newer releases carry a date tag "
                "(e.g. `..._4step_1030.safetensors`): pick the files you downloaded in the loaders."))
    model_high = dit(g, high, "DiT: high-noise expert (FP8)")
    model_low = dit(g, low, "DiT: low-noise expert (FP8)")
    positive, _, vae = text_side(g, "Wan2.2-I2V-A14B/", I2V_PROMPT)
    image = g.add("LoadImage", 1, "Start image")
    latent = g.add("WanExpressSampler", 2, model=model_high.out("model"), model_low=model_low.out("model"),
                   positive=positive, vae=vae.out(), start_image=image.out(), **DISTILL)
    return finish(g, vae.out(), latent.out())


def wan22_t2v_lora_nodes() -> Graph:
    g = Graph("wan_express_wan22_t2v_a14b_lora_nodes", "Text to video with the official Wan2.2 T2V-A14B folder "
              "and LightX2V's T2V distill LoRAs applied by two Wan Express LoRA nodes, one per expert.")
    high = "wan2.2_t2v_A14b_high_noise_lora_rank64_lightx2v_4step_1217.safetensors"
    low = "wan2.2_t2v_A14b_low_noise_lora_rank64_lightx2v_4step_1217.safetensors"
    row, command = whole("Wan-AI/Wan2.2-T2V-A14B", "the whole folder (`high_noise_model/`, `low_noise_model/`, "
                         "umT5, tokenizer, `Wan2.1_VAE.pth`)")
    g.note(note("Wan2.2 T2V-A14B, official weights + LoRA nodes, 4 steps", "The LoRA nodes take both experts and "
                "patch the one the file name names (high_noise / low_noise); chain more for style LoRAs. The "
                "loader's own lora slots do the same at load (before any FP8/INT8 quantization).",
                [row, file_row(high), file_row(low)], [command, download(high), download(low)],
                "Sampler: distill, 4 steps, high-noise expert for steps 1-2. The `report` output of each LoRA "
                "node lists what it patched."))
    model = dit(g, "Wan2.2-T2V-A14B/", "DiT: official Wan2.2 T2V-A14B experts")
    first = g.add("WanExpressLoRA", 1, "LoRA: high-noise distill", model=model.out("model"),
                  model_low=model.out("model_low"), lora=high)
    second = g.add("WanExpressLoRA", 1, "LoRA: low-noise distill", model=first.out("model"),
                   model_low=first.out("model_low"), lora=low)
    positive, _, vae = text_side(g, "Wan2.2-T2V-A14B/", T2V_PROMPT)
    latent = g.add("WanExpressSampler", 2, model=second.out("model"), model_low=second.out("model_low"),
                   positive=positive, **DISTILL)
    return finish(g, vae.out(), latent.out())


def ti2v_5b() -> Graph:
    g = Graph("wan_express_ti2v_5b", "Text-image to video with the official Wan2.2 TI2V-5B (Wan2.2 VAE, 24 fps): "
              "50 UniPC steps with CFG 5 and the official negative prompt.")
    row, command = whole("Wan-AI/Wan2.2-TI2V-5B", "the whole folder (DiT shards + index, config.json, umT5, "
                         "tokenizer, `Wan2.2_VAE.pth`)")
    g.note(note("Wan2.2 TI2V-5B, 24 fps, Wan2.2 VAE", "One 5B model for text to video and image to video: with "
                "the start image connected the video starts from it; disconnect it for text to video. The VAE "
                "loader takes `Wan2.2_VAE.pth` from the folder (48-channel latents, 16x smaller).", [row],
                [command], "Sampler: unipc, 50 steps, shift 5, cfg 5 with the negative prompt, 1280x704, 121 "
                "frames at 24 fps (the official settings). Fits a 24 GB GPU."))
    model = dit(g, "Wan2.2-TI2V-5B/", "DiT: official Wan2.2 TI2V-5B")
    positive, negative, vae = text_side(g, "Wan2.2-TI2V-5B/", T2V_PROMPT, negative=True, vae_title="VAE (Wan2.2)")
    image = g.add("LoadImage", 1, "Start image (optional)")
    latent = g.add("WanExpressSampler", 2, model=model.out("model"), positive=positive, negative=negative,
                   vae=vae.out(), start_image=image.out(), width=1280, height=704, length=121, schedule="unipc",
                   steps=50, shift=5.0, cfg=5.0)
    return finish(g, vae.out(), latent.out(), fps=24)


def lightx2v_config() -> Graph:
    g = Graph("wan_express_lightx2v_config", "Image to video with a LightX2V config JSON naming LightX2V's INT8 "
              "Wan2.2 I2V-A14B expert files: one loader gives both experts.")
    high = "wan2.2_i2v_A14b_high_noise_int8_lightx2v_4step.safetensors"
    low = "wan2.2_i2v_A14b_low_noise_int8_lightx2v_4step.safetensors"
    row, command = components("Wan-AI/Wan2.2-I2V-A14B")
    config = json.dumps(json.loads((HERE / "lightx2v" / LIGHTX2V_CONFIG).read_text()), indent=1)
    g.note(note("LightX2V config JSON: Wan2.2 I2V-A14B INT8 pair", "The DiT loader lists the `.json` files in "
                "`models/wan_express/` as LightX2V configs and follows them: checkpoints (paths relative to the "
                "JSON), `dit_quant_scheme` and `lora_configs`. This one names both INT8 experts, so one loader "
                f"gives `model` and `model_low`. Copy the pack's `workflows/lightx2v/{LIGHTX2V_CONFIG}` to "
                f"`models/wan_express/`:\n\n```json\n{config}\n```",
                [file_row(high), file_row(low), row],
                [download(high), download(low), command,
                 f"cp custom_nodes/<this pack>/workflows/lightx2v/{LIGHTX2V_CONFIG} models/wan_express/"],
                "Sampler: set it as the config says (distill 1000,750,500,250, shift 5, cfg 1); the sampler's "
                "widgets decide, the config's sampling keys are not read by the sampler."))
    model = dit(g, LIGHTX2V_CONFIG, "DiT: LightX2V config (Wan2.2 I2V-A14B INT8 pair)")
    positive, _, vae = text_side(g, "Wan2.2-I2V-A14B/", I2V_PROMPT)
    image = g.add("LoadImage", 1, "Start image")
    latent = g.add("WanExpressSampler", 2, model=model.out("model"), model_low=model.out("model_low"),
                   positive=positive, vae=vae.out(), start_image=image.out(), **DISTILL)
    return finish(g, vae.out(), latent.out())


def t2v_official_cfg() -> Graph:
    g = Graph("wan_express_t2v_official_cfg", "Text to video with the official Wan2.1 T2V-14B and the official "
              "sampler: 50 UniPC steps, shift 5, CFG 5 with the official negative prompt (no distillation).")
    row, command = whole("Wan-AI/Wan2.1-T2V-14B", "the whole folder (DiT shards + index, config.json, umT5, "
                         "tokenizer, VAE)")
    g.note(note("Wan2.1 T2V-14B, official multi-step sampling with CFG", "The official recipe without any "
                "distillation: about 25x the model calls of the 4-step workflows (50 steps, two calls each), the "
                "reference for quality.", [row], [command],
                "Sampler: unipc, 50 steps, shift 5, cfg 5, negative prompt connected. For Wan2.1 T2V-1.3B "
                "(`Wan-AI/Wan2.1-T2V-1.3B`) the official README suggests shift 8-12 and cfg 6."))
    model = dit(g, "Wan2.1-T2V-14B/", "DiT: official Wan2.1 T2V-14B")
    positive, negative, vae = text_side(g, "Wan2.1-T2V-14B/", T2V_PROMPT, negative=True)
    latent = g.add("WanExpressSampler", 2, model=model.out("model"), positive=positive, negative=negative,
                   schedule="unipc", steps=50, shift=5.0, cfg=5.0)
    return finish(g, vae.out(), latent.out())


def core_ksampler() -> Graph:
    g = Graph("wan_express_core_ksampler", "The pack's DiT loader under core's sampling: ModelSamplingSD3 (shift 5) "
              "and KSampler (euler, simple, 4 steps, cfg 1) on LightX2V's distilled FP8 Wan2.1 T2V-14B.")
    model_file = "wan2.1_t2v_14b_scaled_fp8_e4m3_lightx2v_4step.safetensors"
    row, command = components("Wan-AI/Wan2.1-T2V-14B")
    g.note(note("Core KSampler with the Wan Express DiT loader", "The loader's output is a core MODEL: "
                "ModelSamplingSD3 and KSampler drive it (core's LoRA loaders too). Core's KSampler at euler / "
                "simple / 4 steps on shift 5 visits the timesteps of the 4-step distill schedule. The latent is "
                "core's: core's VAEDecode with core's VAE (`wan_2.1_vae.safetensors` from "
                "[Comfy-Org/Wan_2.1_ComfyUI_repackaged](https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged),"
                " `models/vae/`) can replace the Wan Express decode.",
                [file_row(model_file), row], [download(model_file), command],
                "KSampler: euler, simple, 4 steps, cfg 1 (the negative prompt is unused at cfg 1). Do not use "
                "the lcm sampler: it adds fresh noise between steps."))
    model = dit(g, model_file, "DiT: LightX2V Wan2.1 T2V-14B FP8 (4-step)")
    encoder = g.add("WanExpressTextEncoderLoader", 0, model="Wan2.1-T2V-14B/", quantization="auto", device="gpu")
    vae = g.add("WanExpressVAELoader", 0, model="Wan2.1-T2V-14B/")
    shifted = g.add("ModelSamplingSD3", 1, model=model.out("model"), shift=5.0)
    positive = g.add("WanExpressTextEncode", 1, "Prompt", text_encoder=encoder.out(), text=T2V_PROMPT)
    negative = g.add("WanExpressTextEncode", 1, "Negative prompt", text_encoder=encoder.out(), text="")
    empty = g.add("EmptyHunyuanLatentVideo", 1, width=832, height=480, length=81, batch_size=1)
    latent = g.add("KSampler", 2, model=shifted.out(), positive=positive.out(), negative=negative.out(),
                   latent_image=empty.out(), seed=0, steps=4, cfg=1.0, sampler_name="euler", scheduler="simple")
    return finish(g, vae.out(), latent.out())


EXPORT_NAME = "wan2.1_t2v_14b_distill_lora_merged_scaled_fp8_e4m3_lightx2v"


def convert_export() -> Graph:
    g = Graph("wan_express_convert", "Offline merge and export: the official Wan2.1 T2V-14B folder with LightX2V's "
              "4-step distill LoRA merged, written once as a LightX2V scaled-FP8 file that loads fast every time.")
    lora = "wan2.1_t2v_14b_lora_rank64_lightx2v_4step.safetensors"
    row, command = whole("Wan-AI/Wan2.1-T2V-14B", "the whole folder (DiT shards + index, config.json; umT5, "
                         "tokenizer and VAE are not read here)")
    g.note(note("Convert / export: merge the distill LoRA once, save FP8", "Run this workflow once: it reads the "
                "official weights, merges the LoRA in float, quantizes to per-channel FP8 and writes "
                f"`models/diffusion_models/{EXPORT_NAME}.safetensors` (under a temporary name until complete). "
                "Then refresh the page and pick that file in the DiT loader of a text-to-video workflow, with "
                "no LoRA: it is a 4-step model.", [row, file_row(lora)], [command, download(lora)],
                "Formats: lightx2v-bf16 / lightx2v-fp8 / lightx2v-int8 (LightX2V's own layouts) or comfyui-fp8 "
                "(also loads in core's loader). A Wan2.2 A14B folder exports one expert per run (file: "
                "high_noise_model/ or low_noise_model/). overwrite off stops when the file exists. The same "
                "from a shell: `python -m wan_express convert`."))
    g.add("WanExpressConvert", 0, "Convert: Wan2.1 T2V-14B + distill LoRA -> LightX2V FP8",
          model="Wan2.1-T2V-14B/", format="lightx2v-fp8", filename=EXPORT_NAME, overwrite=False, lora=lora)
    return g


TINY_COMMAND = ("python -c \"from pathlib import Path; from wan_express.synthetic import write_model_folder; "
                "write_model_folder(Path('models/wan_express/Wan2.1-T2V-tiny'))\"")


def tiny_cpu() -> Graph:
    g = Graph("wan_express_tiny_cpu", "A tiny random Wan2.1 T2V model in the official folder layout: the whole "
              "pipeline in seconds on a CPU, to check an installation.")
    g.note(f"## Tiny model: check the installation in seconds\n\nA random two-block Wan2.1 T2V model (256 wide) in "
           "the official folder layout: DiT shards + index + `config.json`, the umT5 `.pth` with a "
           "`google/umt5-xxl/` tokenizer, `Wan2.1_VAE.pth`. Nothing to download: the pack writes it. From the "
           "ComfyUI folder, with ComfyUI's Python and the pack importable as `wan_express` (`pip install -e "
           "custom_nodes/<this pack>` once):\n\n"
           f"```sh\n{TINY_COMMAND}\n```\n\nThis writes `models/wan_express/Wan2.1-T2V-tiny/`. Press F5 in the "
           "browser so the loaders list it, then run: a 9-frame 96x64 video of noise-like colour in a few "
           "seconds, on any device. (`python -m wan_express demo` runs the same kind of model outside ComfyUI "
           "and deletes it afterwards.)\n\nMore in the pack's `workflows/README.md`.",
           title="Tiny model: how to make it")
    model = g.add("WanExpressDiTLoader", 0, "DiT: tiny Wan2.1 T2V", model="Wan2.1-T2V-tiny/", quantization="auto",
                  dtype="fp32")
    encoder = g.add("WanExpressTextEncoderLoader", 0, model="Wan2.1-T2V-tiny/", quantization="auto", device="cpu")
    positive = g.add("WanExpressTextEncode", 1, "Prompt", text_encoder=encoder.out(), text="the cat is running")
    vae = g.add("WanExpressVAELoader", 0, model="Wan2.1-T2V-tiny/", dtype="fp32")
    latent = g.add("WanExpressSampler", 2, model=model.out("model"), positive=positive.out(), width=96, height=64,
                   length=9, **DISTILL)
    return finish(g, vae.out(), latent.out())


VACE_LORA = "wan2.1_t2v_14b_lora_rank64_lightx2v_4step.safetensors"
VACE_SIZE = dict(width=832, height=480, length=81)


def vace_graph(name: str, summary: str, title: str, about: str, inputs: str):
    """The shared part of the VACE workflows: note, DiT (+ T2V distill LoRA), prompts and the VACE node's column.

    Returns (graph, model, positive, negative, vae)."""
    g = Graph(name, summary)
    row, command = whole("Wan-AI/Wan2.1-VACE-14B", "the whole folder (DiT shards + index, config.json, umT5, "
                         "tokenizer, VAE)")
    g.note(note(title, about, [row, file_row(VACE_LORA)], [command, download(VACE_LORA)],
                f"{inputs} VACE node and sampler: the same width, height and length (1 + 4k frames, sizes multiples "
                "of 16). Sampler: distill, 1000,750,500,250, shift 5, cfg 1 with the Wan2.1 T2V distill LoRA "
                "(it acts on the base blocks; the VACE blocks stay as trained). Without the LoRA: unipc, 50 steps, "
                "cfg 5 and a negative prompt. VACE-1.3B: `Wan-AI/Wan2.1-VACE-1.3B`, no 14B LoRA."))
    model = dit(g, "Wan2.1-VACE-14B/", "DiT: official Wan2.1 VACE-14B + 4-step distill LoRA", lora=VACE_LORA)
    positive, negative, vae = text_side(g, "Wan2.1-VACE-14B/", T2V_PROMPT, negative=True)
    return g, model, positive, negative, vae


def vace_control_v2v() -> Graph:
    g, model, positive, negative, vae = vace_graph(
        "wan_express_vace_control_v2v", "Control video to video with Wan2.1 VACE-14B in 4 steps: a depth, pose "
        "or edge video (made by any preprocessor) steers the motion and layout; the prompt sets the look.",
        "Wan2.1 VACE-14B: control video to video", "The control video (depth / pose / edges, already "
        "preprocessed) is followed frame by frame; no mask: the whole frame is generated.",
        "Load the control video in LoadVideo.")
    video = g.add("LoadVideo", 1, "Control video (depth / pose / edges)")
    frames = g.add("GetVideoComponents", 1, video=video.out())
    vace = g.add("WanExpressVaceConditioning", 2, positive=positive, negative=negative, vae=vae.out(),
                 control_video=frames.out("images"), strength=1.0, **VACE_SIZE)
    latent = g.add("WanExpressSampler", 2, model=model.out("model"), positive=vace.out("positive"),
                   negative=vace.out("negative"), **VACE_SIZE, **DISTILL)
    return finish(g, vae.out(), latent.out())


def vace_inpainting() -> Graph:
    g, model, positive, negative, vae = vace_graph(
        "wan_express_vace_inpainting", "Video inpainting with Wan2.1 VACE-14B in 4 steps: the white area of the "
        "mask is regenerated from the prompt, the rest of the video is kept.",
        "Wan2.1 VACE-14B: video inpainting", "The video is kept where the mask is black and regenerated where "
        "it is white (one mask image for every frame; paint it in LoadImage's mask editor). A mask around the "
        "frame border outpaints.", "Load the video in LoadVideo and the mask in LoadImage (its MASK output).")
    video = g.add("LoadVideo", 1, "Video to inpaint")
    frames = g.add("GetVideoComponents", 1, video=video.out())
    mask = g.add("LoadImage", 1, "Mask (white = regenerate)")
    vace = g.add("WanExpressVaceConditioning", 2, positive=positive, negative=negative, vae=vae.out(),
                 control_video=frames.out("images"), control_masks=mask.out("MASK"), strength=1.0, **VACE_SIZE)
    latent = g.add("WanExpressSampler", 2, model=model.out("model"), positive=vace.out("positive"),
                   negative=vace.out("negative"), **VACE_SIZE, **DISTILL)
    return finish(g, vae.out(), latent.out())


def vace_reference_to_video() -> Graph:
    g, model, positive, negative, vae = vace_graph(
        "wan_express_vace_reference_to_video", "Reference to video with Wan2.1 VACE-14B in 4 steps: a subject "
        "or style image is carried into a new video described by the prompt.",
        "Wan2.1 VACE-14B: reference image to video", "The reference image (a subject on a plain background "
        "works best) is encoded as an extra first latent frame; TrimVideoLatent removes it (trim_amount 1, the "
        "VACE node's trim_latent) before decoding.", "Load the reference image in LoadImage.")
    image = g.add("LoadImage", 1, "Reference image")
    vace = g.add("WanExpressVaceConditioning", 2, positive=positive, negative=negative, vae=vae.out(),
                 reference_image=image.out("IMAGE"), strength=1.0, **VACE_SIZE)
    latent = g.add("WanExpressSampler", 2, model=model.out("model"), positive=vace.out("positive"),
                   negative=vace.out("negative"), **VACE_SIZE, **DISTILL)
    trimmed = g.add("TrimVideoLatent", 3, samples=latent.out(), trim_amount=1)
    return finish(g, vae.out(), trimmed.out())


GRAPHS = (t2v_4step, wan22_i2v_a14b_4step, t2v_lightx2v_fp8, i2v_480p_int8, flf2v_720p, wan22_i2v_lightx2v_fp8,
          wan22_t2v_lora_nodes, ti2v_5b, lightx2v_config, t2v_official_cfg, core_ksampler, tiny_cpu, convert_export,
          vace_control_v2v, vace_inpainting, vace_reference_to_video)
def workflows() -> dict[str, dict]:
    """File name -> UI-format workflow, for every graph above."""
    graphs = [make() for make in GRAPHS]
    return {f"{graph.name}.json": graph.to_json(FILES) for graph in graphs}


def dump(workflow: dict) -> str:
    return json.dumps(workflow, indent=1, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    for name, workflow in workflows().items():
        (HERE / name).write_text(dump(workflow))
        print(name)
