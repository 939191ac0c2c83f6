"""LoRAs for the Wan DiT (spec formats.md §9), one module per stage.

- `spec`: `LoraSpec` (a LoRA asked for), Wan2.2 expert routing (`expert_of`, `route_loras`) and `load_loras`.
- `format`: `read_lora` / `parse_lora`, every key style -> one `LoraFile` with official module names.
- `merge`: `LoraPlan` (which delta lands on which tensor, checked against the model's shapes) and the merged
  tensors, lazily over a state dict (`MergedTensors`, `merged_view`) for merging at load or export.
- `attach`: on a built model, `merge_loras` in place or `attach_loras` unmerged with live strengths.
- `linear`: `LoraLinear`, the side-branch wrapper that `attach` puts on linears.
"""

from .attach import LoraAttachment, attach_loras, merge_loras
from .format import LoraFile, parse_lora, read_lora
from .linear import LoraLinear
from .merge import AppliedLora, LoraPlan, MergedTensors, merged_view
from .spec import LoraSpec, expert_of, load_loras, route_loras

__all__ = ["AppliedLora", "LoraAttachment", "LoraFile", "LoraLinear", "LoraPlan", "LoraSpec", "MergedTensors",
           "attach_loras", "expert_of", "load_loras", "merge_loras", "merged_view", "parse_lora", "read_lora",
           "route_loras"]
