"""Fuzz targets of the DiT side: safetensors headers, DiT files, sharded folders and indexes, quantized layouts,
LightX2V configs, inspect, convert and the DiT loader's widget values.

Each target is a ``make_case(rng, folder) -> args`` writing one hostile input, built from tiny valid files of the
test writers (`tests.loader_files`) and mutated, and a ``load(*args)`` calling the public loader. `TARGETS` lists
them for `test_fuzz_dit` and `long_run`.
"""

from __future__ import annotations

import functools
import json
import os
import random
import tempfile
from pathlib import Path

import torch


from wan_express.loaders.dit.loader import open_dit
from wan_express.loaders.export.convert import convert_dit
from wan_express.loaders.export.writer import EXPORT_FORMATS
from wan_express.loaders.files import open_tensors
from wan_express.loaders.files.header import _DTYPE_NAMES
from wan_express.loaders.inspector import inspect
from wan_express.models import WanConfig
from wan_express.nodes.host import model_choice
from wan_express.synthetic import random_dit_weights, write_dit_shards

from ..loader_files import per_channel
from .mutations import HOSTILE_VALUES, flip_bits, mutate_header, random_json, safetensors_bytes

# The smallest DiT the shape inference accepts: one 128-wide head, two blocks.
MICRO_CONFIG = WanConfig("t2v", 4, 4, dim=128, ffn_dim=128, num_heads=1, num_layers=2, freq_dim=32, text_dim=16)
INDEX = "diffusion_pytorch_model.safetensors.index.json"
ESCAPES = ["../outside.safetensors", "/etc/hostname", "..\\outside.safetensors", "C:/x.safetensors", "a/../../x",
           "/proc/self/environ", "x" * 5000, "a\u0000b", "", ".", "sub/../../../outside.safetensors"]

_NAME_OF_DTYPE = {getattr(torch, name): code for code, name in _DTYPE_NAMES.items() if hasattr(torch, name)}


def header_and_data(tensors: dict[str, torch.Tensor]) -> tuple[dict, bytes]:
    """A safetensors header dict and data section for ``tensors``, laid out in order (what `save_file` writes)."""
    header, chunks, offset = {}, [], 0
    for key, tensor in tensors.items():
        raw = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        header[key] = {"dtype": _NAME_OF_DTYPE[tensor.dtype], "shape": list(tensor.shape),
                       "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    return header, b"".join(chunks)


@functools.lru_cache(maxsize=None)
def _small_tensors() -> tuple[dict, bytes]:
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "a.weight": torch.randn(2, 3, generator=generator),
        "b.bias": torch.randn(4, generator=generator).bfloat16(),
        "c.codes": torch.randint(-128, 127, (2, 2), generator=generator, dtype=torch.int8),
        "d.fp8": torch.randn(3, generator=generator).to(torch.float8_e4m3fn),
        "e.scalar": torch.tensor(1.5),
        "f.empty": torch.zeros(0, 4),
    }
    return header_and_data(tensors)


def make_safetensors_case(rng: random.Random, folder: Path) -> tuple:
    header, data = _small_tensors()
    path = folder / "weights.safetensors"
    path.write_bytes(mutate_header(rng, header, data))
    return (path,)


def read_every_tensor(path: Path) -> list[torch.Tensor]:
    """Open a safetensors file and read each tensor, keeping them all, as a model build does."""
    view = open_tensors(path)
    return [view[key] for key in view]


@functools.lru_cache(maxsize=None)
def micro_weights() -> dict[str, torch.Tensor]:
    return random_dit_weights(MICRO_CONFIG, seed=0, dtype=torch.bfloat16)


@functools.lru_cache(maxsize=None)
def _quantized_weights(codes: str) -> dict[str, torch.Tensor]:
    out = {}
    for key, tensor in micro_weights().items():
        if tensor.dim() == 2 and key.split(".")[2:3] and key.split(".")[2] in ("self_attn", "cross_attn", "ffn"):
            out[key], out[key[:-len("weight")] + "weight_scale"] = per_channel(tensor, codes)
        else:
            out[key] = tensor
    return out


def mutate_dit(rng: random.Random, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A semantically hostile DiT: keys renamed, dropped or added, shapes and dtypes changed, layout kept valid."""
    tensors = dict(tensors)
    key = rng.choice(sorted(tensors))
    kind = rng.randrange(9)
    if kind == 0:
        tensors[f"blocks.{rng.choice([2, 3, 1000, 1000000])}.self_attn.q.weight"] = tensors.pop(key)
    elif kind == 1:
        for i in range(rng.choice([2, 100, 3000])):
            tensors[f"blocks.{i + 2}.x"] = torch.zeros(0, dtype=torch.uint8)
    elif kind == 2:
        del tensors[key]
    elif kind == 3:
        shape = rng.choice([(0,), (), (3,), (100, 4, 1, 2, 2), (1, 1), (2, 3, 4), (0, 128)])
        tensors[key] = torch.zeros(shape, dtype=torch.bfloat16)
    elif kind == 4:
        tensors[key] = tensors[key].to(rng.choice([torch.int32, torch.bool, torch.int8, torch.float8_e5m2,
                                                   torch.float16, torch.uint8, torch.float8_e4m3fn]))
    elif kind == 5:
        tensors[key] = torch.full_like(tensors[key], rng.choice([float("nan"), float("inf"), 0.0]))
    elif kind == 6:
        tensors["patch_embedding.weight"] = torch.zeros(rng.choice([0, 1, 100, 129]), 4, 1, 2, 2)
    elif kind == 7:
        tensors[rng.choice(["vace_blocks.0.x", "scaled_fp8", "img_emb.emb_pos", "x.comfy_quant", "a.input_scale",
                            "blocks.0.self_attn.q.scale_weight"])] = torch.zeros(rng.choice([0, 1, 2]))
    else:
        tensors[key.replace("blocks.", rng.choice(["model.diffusion_model.blocks.", "blocks.x", "block.", ""]))] = \
            tensors.pop(key)
    return tensors


def _write(path: Path, tensors: dict[str, torch.Tensor], rng: random.Random, raw_mutation: float = 0.3) -> Path:
    header, data = header_and_data(tensors)
    path.write_bytes(mutate_header(rng, header, data) if rng.random() < raw_mutation else
                     safetensors_bytes(header, data))
    return path


def make_dit_file_case(rng: random.Random, folder: Path) -> tuple:
    return (_write(folder / "wan_t2v.safetensors", mutate_dit(rng, micro_weights()), rng),)


def make_quantized_case(rng: random.Random, folder: Path) -> tuple:
    tensors = dict(_quantized_weights(rng.choice(["fp8", "int8"])))
    scales = sorted(key for key in tensors if key.endswith("weight_scale"))
    for _ in range(rng.randrange(1, 4)):
        key = rng.choice(scales)
        if key not in tensors:
            continue
        out = tensors[key].shape[0] if tensors[key].dim() else 0
        kind = rng.randrange(6) if out else 0
        if kind == 0:
            del tensors[key]
        elif kind == 1:
            tensors[key] = torch.ones(rng.choice([(out,), (out, 2), (2, 1), (1,), (), (out + 1, 1), (0,)]))
        elif kind == 2:
            row = rng.randrange(out)  # one scale row made zero, NaN, Inf or negative (in float32: FP8 cannot be
            scales = tensors[key].float().clone()  # written in place, and the scale's own dtype is kept)
            scales[row] = rng.choice([0.0, float("nan"), float("inf"), -1.0])
            tensors[key] = scales.to(tensors[key].dtype)
        elif kind == 3:
            tensors[key] = tensors[key].to(rng.choice([torch.float16, torch.int32, torch.bool, torch.float8_e4m3fn]))
        elif kind == 4:
            weight = key[:-len("_scale")]
            tensors[weight] = tensors[weight].to(rng.choice([torch.bfloat16, torch.int32, torch.float8_e5m2]))
        else:
            tensors[key[:-len("weight_scale")] + "scale_weight"] = tensors.pop(key).reshape(-1)[:1].reshape(())
            tensors["scaled_fp8"] = torch.zeros(rng.choice([0, 2, 3]), dtype=torch.float8_e4m3fn)
    return (_write(folder / "wan_fp8.safetensors", tensors, rng, raw_mutation=0.1),)


@functools.lru_cache(maxsize=None)
def _folder_files() -> dict[str, bytes]:
    """The files of a valid official folder of the micro DiT (shards, index, config), written once per worker."""
    with tempfile.TemporaryDirectory() as root:
        model = write_dit_shards(Path(root), {k: v.float() for k, v in micro_weights().items()}, MICRO_CONFIG)
        return {path.name: path.read_bytes() for path in model.iterdir()}


def make_folder_case(rng: random.Random, folder: Path) -> tuple:
    model = folder / "model"
    model.mkdir()
    for name, raw in _folder_files().items():
        (model / name).write_bytes(raw)
    (folder / "outside.safetensors").write_bytes(b"outside")
    index = json.loads((model / INDEX).read_text())
    weight_map = index["weight_map"]
    shards = sorted({name for name in weight_map.values()})
    for _ in range(rng.randrange(1, 3)):
        kind = rng.randrange(7)
        key = rng.choice(sorted(weight_map))
        if kind == 0:
            weight_map[key] = rng.choice(ESCAPES)
        elif kind == 1:
            (model / rng.choice(shards)).unlink(missing_ok=True)
        elif kind == 2 and weight_map[key] in shards:  # (an earlier mutation may have pointed it outside)
            weight_map[key] = shards[(shards.index(weight_map[key]) + 1) % len(shards)]
        elif kind == 3:
            weight_map[rng.choice(["blocks.9.x", "extra", key + ".copy"])] = rng.choice(shards + ESCAPES)
        elif kind == 4:
            index = rng.choice([random_json(rng), {"weight_map": random_json(rng)}, [], {"weight_map": [1]},
                                {"weight_map": {key: rng.choice(HOSTILE_VALUES) for key in weight_map}}])
        elif kind == 5:
            config = json.loads((model / "config.json").read_text())
            config[rng.choice(sorted(config) + ["num_heads", "eps", "text_len"])] = rng.choice(HOSTILE_VALUES)
            (model / "config.json").write_text(json.dumps(config))
        else:
            shard = model / rng.choice(shards)
            if shard.exists():
                shard.write_bytes(flip_bits(rng, shard.read_bytes(), 0, 400, 3))
    text = json.dumps(index, ensure_ascii=False)
    (model / INDEX).write_bytes(text.encode("utf-8", "surrogatepass") if rng.random() < 0.9 else
                                flip_bits(rng, text.encode("utf-8", "surrogatepass"), 0, len(text), 4))
    return (model,)


LIGHTX2V_KEYS = ["dit_original_ckpt", "dit_quantized_ckpt", "high_noise_original_ckpt", "low_noise_original_ckpt",
                 "model_path", "dit_quantized", "dit_quant_scheme", "lora_configs", "denoising_step_list",
                 "sample_shift", "boundary_step_index"]


def make_lightx2v_case(rng: random.Random, folder: Path) -> tuple:
    # the case folder is the models folder: the config in wan_express/, the DiT in diffusion_models/
    (folder / "diffusion_models").mkdir()
    (folder / "wan_express").mkdir()
    (folder / "diffusion_models" / "wan_t2v.safetensors").write_bytes(
        safetensors_bytes(*header_and_data(micro_weights())))
    config = {"dit_original_ckpt": "../diffusion_models/wan_t2v.safetensors"}
    for _ in range(rng.randrange(1, 5)):
        key = rng.choice(LIGHTX2V_KEYS)
        config[key] = rng.choice([
            rng.choice(HOSTILE_VALUES), rng.choice(ESCAPES), "../diffusion_models/wan_t2v.safetensors", ".",
            random_json(rng),
            "fp8-sgl", "nvfp4", True,
            [{"path": rng.choice(ESCAPES + ["lora.safetensors", 5]), "strength": rng.choice(HOSTILE_VALUES),
              "alpha": rng.choice([None, 1.0, "x", 1e308 * 10]), "name": rng.choice([None, "high_noise_model", 3])}]])
    path = folder / "wan_express" / "wan_lightx2v.json"
    text = json.dumps(config, ensure_ascii=False, allow_nan=True).encode("utf-8", "surrogatepass")
    path.write_bytes(text if rng.random() < 0.8 else flip_bits(rng, text, 0, len(text), 3))
    return (path,)


def make_inspect_case(rng: random.Random, folder: Path) -> tuple:
    maker = rng.choice([make_dit_file_case, make_quantized_case, make_folder_case, make_lightx2v_case])
    return maker(rng, folder)


def make_convert_case(rng: random.Random, folder: Path) -> tuple:
    base = (make_dit_file_case(rng, folder)[0] if rng.random() < 0.7 else
            _write(folder / "wan_t2v.safetensors", micro_weights(), rng, 0.0))
    output = folder / rng.choice(["out.safetensors", "out.bin", "wan_t2v.safetensors", "sub/out.safetensors"])
    return base, output, rng.choice(sorted(EXPORT_FORMATS))


def convert(base: Path, output: Path, layout: str) -> None:
    convert_dit(base, output, layout)


WIDGET_CHOICES = ["model/", "../", "../../etc/", "/etc/", "model/../../", "./", "a\u0000b/", "x" * 5000 + "/",
                  "..\\..\\x/", "model", "cfg.json", "../cfg.json", "/tmp/", "~/", "C:/x/", "", "/", "//"]


def make_widget_case(rng: random.Random, folder: Path) -> tuple:
    root = folder / "models" / "wan_express"
    (root / "model").mkdir(parents=True)
    (folder / "models" / "cfg.json").write_text("{}")
    choice = rng.choice(WIDGET_CHOICES)
    if rng.random() < 0.5:
        choice = "".join(rng.choice(["..", "/", "model", ".", "\\", "x", "\u0000"]) for _ in range(rng.randrange(1, 6)))
        choice += rng.choice(["/", ".json", ""])
    return root, choice


def resolve_widget(root: Path, choice: str) -> None:
    """The DiT loader's folder / config choice: the result must lie inside the models folder."""
    path = model_choice([root], choice)
    if not os.path.normpath(path).startswith(str(root) + os.sep):
        raise AssertionError(f"choice resolved outside the models folder: {path}")


def open_and_read(path: Path) -> None:
    """Open a DiT and read every canonical tensor (what a load does, without building the network: scales are
    checked as they are read)."""
    tensors = open_dit(path).tensors
    for key in tensors:
        tensors[key]


TARGETS = {
    "safetensors_header": (make_safetensors_case, read_every_tensor),
    "dit_file": (make_dit_file_case, open_and_read),
    "quantized": (make_quantized_case, open_and_read),
    "sharded_folder": (make_folder_case, open_dit),
    "lightx2v_config": (make_lightx2v_case, open_dit),
    "inspect": (make_inspect_case, inspect),
    "convert": (make_convert_case, convert),
    "node_widget": (make_widget_case, resolve_widget),
}
