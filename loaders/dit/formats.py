"""Facts about DiT file layouts, as data: key prefixes, quantization markers, model signatures, name patterns.

Read by `layouts`, `quant_layouts`, `folders` and `..inspector` (spec formats.md §1-§7); nothing here
branches, so a new layout is a new table row.
"""

from __future__ import annotations

import re

import torch

# Keys every complete official-named DiT has; whatever precedes them in a file is its prefix (formats.md §7.1).
ANCHOR_KEYS = ("head.modulation", "blocks.0.self_attn.q.weight")
# diffusers-named files: a top-level table or a block projection (the prefix is what precedes them).
DIFFUSERS_ANCHOR_KEYS = ("condition_embedder.time_proj.weight", "blocks.0.attn1.to_q.weight")
# Prefixes seen in the wild; any other prefix is still stripped but reported as unusual.
KNOWN_PREFIXES = ("", "model.diffusion_model.", "diffusion_model.", "model.", "video_model.", "transformer.")

# Top-level marker of the legacy scaled-FP8 layout (formats.md §5.2, §4.4); it is never prefixed.
SCALED_FP8_MARKER = "scaled_fp8"
# ComfyUI per-layer metadata: a uint8 JSON tensor per layer, or one header entry for the whole file (§5.3).
COMFY_QUANT_SUFFIX = "comfy_quant"
COMFY_QUANT_METADATA = "_quantization_metadata"

# Scale key suffixes, in the order they are looked for: LightX2V / converted ComfyUI, then legacy scaled FP8.
SCALE_SUFFIXES = ("weight_scale", "scale_weight")
# Static activation scales: dropped, since activations are quantized per token at run time (performance.md).
ACTIVATION_SCALE_SUFFIXES = ("input_scale", "scale_input")

# Stored weight dtype -> QuantScheme codes.
CODES_OF_DTYPE = {torch.float8_e4m3fn: "fp8_e4m3", torch.int8: "int8"}

# ComfyUI comfy_quant "format" -> QuantScheme codes; formats absent here are refused by name.
COMFY_FORMATS = {"float8_e4m3fn": "fp8_e4m3", "int8_tensorwise": "int8"}

# Which layers LightX2V's converter quantizes: 2-D weights whose third dotted part is one of these (§4.1).
QUANTIZED_PARTS = ("self_attn", "cross_attn", "ffn")

# Files that are some other component: (key pattern, what it is, which loader takes it). First match wins.
OTHER_COMPONENTS = (
    (re.compile(r"(^|\.)(lora_(up|down|A|B)|lora\.(up|down))(\.|$)|^lora_unet_|\.diff(_b|_m)?$|(^|\.)diff_m$"),
     "a LoRA", "apply it with the LoRA loader on top of a DiT"),
    (re.compile(r"decoder\.middle\.0\.residual\.0\.gamma$"), "a Wan VAE", "load it with the VAE loader"),
    (re.compile(r"^(token_embedding\.weight|shared\.weight|encoder\.block\.0\.)|\.ffn\.gate\.0\.weight$"),
     "a umT5 text encoder", "load it with the text encoder loader"),
    (re.compile(r"^(visual\.|vision_model\.|log_scale$)"), "a CLIP vision encoder",
     "load it with the CLIP vision loader"),
)

# Expert role from a file or folder name (the only place it is recorded, formats.md §4.7).
ROLE_PATTERN = re.compile(r"(?<![a-z])(high|low)[_\-]?noise", re.IGNORECASE)
# Family hints in names, for the shapes that Wan2.1 and Wan2.2 share (T2V-14B).
FAMILY_PATTERNS = ((re.compile(r"wan[_\-. ]?2[._]?2|a14b", re.IGNORECASE), "Wan2.2"),
                   (re.compile(r"wan[_\-. ]?2[._]?1", re.IGNORECASE), "Wan2.1"))

# Released widths -> size names (networks.md §1.1).
SIZE_OF_DIM = {1536: "1.3B", 5120: "14B", 3072: "5B"}
