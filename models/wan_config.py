"""Architecture configuration of the Wan DiT: the dataclass, the released variants, and inference from tensors.

`WanConfig.from_json` reads an official `config.json`; `WanConfig.infer(shapes)` derives the same config from
tensor names and shapes alone (a safetensors header is enough), so a folder without `config.json` still loads.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Sequence

from ..errors import ModelFormatError, UnsupportedModelError
from .block_indices import block_count
from .latent_spaces import WAN22_LATENT
from .unsupported import refuse_unsupported

MODEL_TYPES = ("t2v", "i2v", "flf2v", "ti2v")

# Every released model uses 128-wide attention heads; configs without `num_heads` rely on it.
HEAD_DIM = 128

_VACE_BLOCK_INDEX = re.compile(r"^vace_blocks\.(\d+)\.")


def default_vace_layers(num_layers: int, vace_blocks: int | None) -> tuple[int, ...]:
    """The official placement of ``vace_blocks`` hints: every ``num_layers // vace_blocks``-th block from 0
    (1.3B: 15 of 30 -> 0, 2, ..., 28; 14B: 8 of 40 -> 0, 5, ..., 35); without a count, every second block (the
    official default). Used when only the tensors are known."""
    stride = 2 if vace_blocks is None else max(num_layers // vace_blocks, 1)
    layers = tuple(range(0, num_layers, stride))
    return layers if vace_blocks is None else layers[:vace_blocks]


@dataclasses.dataclass(frozen=True)
class WanConfig:
    """Hyper-parameters of one Wan DiT.

    Attributes:
        model_type: ``"t2v"``, ``"i2v"`` (image latent concatenated as ``y``), ``"flf2v"`` (first and last frame,
            CLIP tokens with ``emb_pos``) or ``"ti2v"`` (Wan2.2 5B, per-token timesteps).
        in_dim: channels entering the patch embedding (latent plus ``y``): 16, 36 or 48.
        out_dim: latent channels predicted: 16 (Wan2.1 VAE) or 48 (Wan2.2 VAE).
        dim: transformer width ``D``.
        ffn_dim: hidden width of the feed-forward network ``F``.
        num_heads: attention heads; ``dim / num_heads`` is 128 in every release.
        num_layers: number of transformer blocks ``L``.
        clip_branch: Wan2.1 image models only: CLIP tokens enter through ``img_emb`` and ``k_img``/``v_img``.
            Wan2.2 I2V-A14B has ``model_type="i2v"`` but no CLIP branch.
        freq_dim: width of the sinusoidal timestep embedding (256).
        text_dim: width of the text encoder output (4096 for umT5-XXL).
        text_len: text tokens the context is zero-padded to (512).
        eps: epsilon of the block LayerNorms and RMSNorms.
        vace_layers: Wan2.1 VACE only: the base blocks after which the VACE hints are added, in order (one
            ``vace_blocks.N`` per entry); empty for every other model.
        vace_in_dim: Wan2.1 VACE only: channels of the VACE context (96: 16 inactive + 16 reactive latent + 64
            mask channels); 0 otherwise.
    """

    model_type: str
    in_dim: int
    out_dim: int
    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    clip_branch: bool = False
    freq_dim: int = 256
    text_dim: int = 4096
    text_len: int = 512
    eps: float = 1e-6
    vace_layers: tuple[int, ...] = ()
    vace_in_dim: int = 0

    patch_size = (1, 2, 2)
    clip_dim = 1280
    clip_tokens = 257

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise UnsupportedModelError(
                f"model_type {self.model_type!r} is not supported (expected one of {', '.join(MODEL_TYPES)})")
        if self.num_heads <= 0 or self.dim % self.num_heads or (self.dim // self.num_heads) % 2:
            raise ModelFormatError(f"dim {self.dim} is not divisible into {self.num_heads} heads of even width")
        if self.model_type == "flf2v" and not self.clip_branch:
            raise ModelFormatError("an flf2v model needs the CLIP branch (img_emb)")
        if self.vace_layers and (self.model_type != "t2v" or not self.vace_in_dim or self.vace_layers[0] != 0
                                 or list(self.vace_layers) != sorted(set(self.vace_layers))
                                 or self.vace_layers[-1] >= self.num_layers):
            raise ModelFormatError(f"VACE layers {list(self.vace_layers)} must be increasing block indices from 0 "
                                   f"below {self.num_layers}, on a t2v model with a VACE context width")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def is_vace(self) -> bool:
        """Wan2.1 VACE: a T2V model with ``vace_patch_embedding`` and ``vace_blocks`` (models.wan_vace)."""
        return bool(self.vace_layers)

    @property
    def y_dim(self) -> int:
        """Channels of the conditioning tensor ``y`` concatenated to the latent (0 when none)."""
        return self.in_dim - self.out_dim if self.model_type in ("i2v", "flf2v") else 0

    @property
    def image_tokens(self) -> int:
        """CLIP tokens the model expects: 257 for i2v, 514 for flf2v, 0 without a CLIP branch."""
        if not self.clip_branch:
            return 0
        return 2 * self.clip_tokens if self.model_type == "flf2v" else self.clip_tokens

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, clip_branch: bool | None = None, source: str = "config.json"):
        """Build from an official ``config.json`` dict.

        ``clip_branch`` cannot be read from the file (Wan2.1 I2V and Wan2.2 I2V-A14B share the same JSON); the
        loader passes what the weights show. Without it, Wan2.1 semantics are assumed for i2v/flf2v.
        """
        refuse_unsupported((), data, source)
        try:
            model_type = data.get("model_type", "t2v")
            vace_layers = tuple(int(i) for i in data.get("vace_layers", ()))
            if model_type == "vace" or vace_layers or data.get("_class_name") == "VaceWanModel":
                model_type = "t2v"  # the official VACE config names its own model_type; the base is T2V
                vace_layers = vace_layers or default_vace_layers(int(data["num_layers"]), None)
            dim = int(data["dim"])
            kwargs = dict(
                model_type=model_type,
                in_dim=int(data["in_dim"]),
                out_dim=int(data.get("out_dim", 16)),
                dim=dim,
                ffn_dim=int(data["ffn_dim"]),
                num_heads=int(data.get("num_heads", dim // HEAD_DIM)),
                num_layers=int(data["num_layers"]),
                freq_dim=int(data.get("freq_dim", 256)),
                text_dim=int(data.get("text_dim", 4096)),
                text_len=int(data.get("text_len", 512)),
                eps=float(data.get("eps", 1e-6)),
                vace_layers=vace_layers,
                vace_in_dim=int(data.get("vace_in_dim", 96)) if vace_layers else 0,
            )
        except KeyError as missing:
            raise ModelFormatError(f"{source}: required key {missing} is missing") from None
        except (TypeError, ValueError) as bad:
            raise ModelFormatError(f"{source}: {bad}") from None
        if clip_branch is None:
            clip_branch = model_type in ("i2v", "flf2v")
        return cls(clip_branch=clip_branch, **kwargs)

    def to_json(self) -> dict[str, Any]:
        """The official ``config.json`` fields of this config (``clip_branch`` is not part of it)."""
        data = dataclasses.asdict(self)
        del data["clip_branch"]
        if not self.vace_layers:
            del data["vace_layers"], data["vace_in_dim"]
            return {"_class_name": "WanModel", **data}
        return {"_class_name": "VaceWanModel", **data, "model_type": "vace", "vace_layers": list(self.vace_layers)}

    @classmethod
    def infer(cls, shapes: Mapping[str, Sequence[int]], *, source: str = "state dict") -> "WanConfig":
        """Derive the config from official key names and tensor shapes (no tensor data needed).

        Args:
            shapes: key -> shape for every tensor of the model, prefixes already stripped.
            source: name of the file or folder, used in error messages.
        """
        refuse_unsupported(shapes, None, source)

        def shape_of(key: str, rank: int) -> Sequence[int]:
            if key not in shapes:
                raise ModelFormatError(
                    f"{source}: tensor {key!r} is missing, so this is not a complete Wan DiT "
                    "(is it a LoRA, a VAE or a text encoder?)")
            shape = tuple(shapes[key])
            if len(shape) < rank or not all(shape[:rank]):
                raise ModelFormatError(f"{source}: tensor {key!r} has shape {list(shape)}; a Wan DiT stores at least "
                                       f"{rank} non-zero dimensions there")
            return shape

        dim, in_dim = shape_of("patch_embedding.weight", 2)[:2]
        out_dim = shape_of("head.head.weight", 1)[0] // 4
        layers = block_count(shapes, source)
        if dim % HEAD_DIM or not out_dim:
            raise ModelFormatError(f"{source}: width {dim} (patch_embedding) is not a multiple of the {HEAD_DIM}-wide "
                                   f"attention heads, or head.head has fewer than 4 rows; the file is not a Wan DiT")
        clip_branch = "img_emb.proj.0.weight" in shapes
        if "img_emb.emb_pos" in shapes:
            model_type = "flf2v"
        elif clip_branch or in_dim > out_dim:
            model_type = "i2v"
        elif out_dim == WAN22_LATENT.channels:
            model_type = "ti2v"
        else:
            model_type = "t2v"
        vace_blocks = {int(m.group(1)) for key in shapes if (m := _VACE_BLOCK_INDEX.match(key))}
        if len(vace_blocks) > layers:
            raise ModelFormatError(f"{source}: {len(vace_blocks)} vace_blocks for {layers} blocks; the file is not a "
                                   "Wan2.1 VACE model")
        vace_in_dim = shape_of("vace_patch_embedding.weight", 2)[1] if "vace_patch_embedding.weight" in shapes else 0
        if bool(vace_blocks) != bool(vace_in_dim) or vace_blocks != set(range(len(vace_blocks))):
            raise ModelFormatError(f"{source}: VACE tensors are incomplete (vace_patch_embedding "
                                   f"{'present' if vace_in_dim else 'missing'}, vace_blocks {sorted(vace_blocks)[:8]})")
        try:
            return cls(
                model_type=model_type,
                in_dim=in_dim,
                out_dim=out_dim,
                dim=dim,
                ffn_dim=shape_of("blocks.0.ffn.0.weight", 1)[0],
                num_heads=dim // HEAD_DIM,
                num_layers=layers,
                clip_branch=clip_branch,
                freq_dim=shape_of("time_embedding.0.weight", 2)[1],
                text_dim=shape_of("text_embedding.0.weight", 2)[1],
                vace_layers=default_vace_layers(layers, len(vace_blocks)) if vace_blocks else (),
                vace_in_dim=vace_in_dim,
            )
        except ModelFormatError as error:
            raise ModelFormatError(f"{source}: {error}") from None


_WAN14B = dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)

RELEASED_CONFIGS: dict[str, WanConfig] = {
    "Wan2.1-T2V-1.3B": WanConfig("t2v", 16, 16, dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
    "Wan2.1-T2V-14B": WanConfig("t2v", 16, 16, **_WAN14B),
    "Wan2.1-I2V-14B": WanConfig("i2v", 36, 16, clip_branch=True, **_WAN14B),
    "Wan2.1-FLF2V-14B": WanConfig("flf2v", 36, 16, clip_branch=True, **_WAN14B),
    "Wan2.2-T2V-A14B": WanConfig("t2v", 16, 16, **_WAN14B),
    "Wan2.2-I2V-A14B": WanConfig("i2v", 36, 16, clip_branch=False, **_WAN14B),
    "Wan2.1-VACE-1.3B": WanConfig("t2v", 16, 16, dim=1536, ffn_dim=8960, num_heads=12, num_layers=30,
                                  vace_layers=tuple(range(0, 30, 2)), vace_in_dim=96),
    "Wan2.1-VACE-14B": WanConfig("t2v", 16, 16, vace_layers=tuple(range(0, 40, 5)), vace_in_dim=96, **_WAN14B),
    "Wan2.2-TI2V-5B": WanConfig("ti2v", 48, 48, dim=3072, ffn_dim=14336, num_heads=24, num_layers=30),
}
"""The released DiT configurations (spec networks.md §1.1), used to name what a loader found."""
