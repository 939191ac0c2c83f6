"""Facts about DiT file layouts, as data: key prefixes, quantization targets, model signatures, name patterns.

Read by `layouts`, `quant_targets`, `folders` and `..inspector` (spec formats.md §1-§7); nothing here
branches, so a new layout is a new table row.
"""

from __future__ import annotations

import re

# Keys every complete official-named DiT has; whatever precedes them in a file is its prefix (formats.md §7.1).
ANCHOR_KEYS = ("head.modulation", "blocks.0.self_attn.q.weight")
# diffusers-named files: a top-level table or a block projection (the prefix is what precedes them).
DIFFUSERS_ANCHOR_KEYS = ("condition_embedder.time_proj.weight", "blocks.0.attn1.to_q.weight")
# Prefixes seen in the wild; any other prefix is still stripped but reported as unusual.
KNOWN_PREFIXES = ("", "model.diffusion_model.", "diffusion_model.", "model.", "video_model.", "transformer.")

# Which layers LightX2V's converter quantizes: 2-D weights whose third dotted part is one of these (§4.1), i.e.
# every attention and FFN linear inside the blocks; embeddings, modulation and head stay float.
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

# Family hints in names, for the shapes that Wan2.1 and Wan2.2 share (T2V-14B).
FAMILY_PATTERNS = ((re.compile(r"wan[_\-. ]?2[._]?2|a14b", re.IGNORECASE), "Wan2.2"),
                   (re.compile(r"wan[_\-. ]?2[._]?1", re.IGNORECASE), "Wan2.1"))

# Released widths -> size names (networks.md §1.1).
SIZE_OF_DIM = {1536: "1.3B", 5120: "14B", 3072: "5B"}
