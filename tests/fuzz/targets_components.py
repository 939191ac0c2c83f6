"""Fuzz targets of the component side: ``.pth`` pickles, umT5, CLIP vision and VAE files, LoRA key sets and shapes,
and the component loader nodes' widget values.

Each target is a ``make_case(rng, folder) -> args`` writing one hostile input, built from tiny valid files (the
networks' own tiny configs, `synthetic`) and mutated, and a ``load(*args)`` calling the public loader. `TARGETS`
lists them for `test_fuzz_components`.
"""

from __future__ import annotations

import functools
import io
import pickle
import random
import struct
import zipfile
from pathlib import Path

import torch

from wan_express.loaders.clip_vision import load_clip_vision
from wan_express.loaders.components import resolve_component
from wan_express.loaders.files import open_tensors
from wan_express.loaders.lora import AppliedLora, LoraPlan, read_lora
from wan_express.loaders.text_encoder import load_text_encoder
from wan_express.loaders.vae import load_vae
from wan_express.models.clip_vision import ClipVisionConfig, ClipVisionEncoder
from wan_express.models.t5 import T5Config, UMT5Encoder
from wan_express.synthetic import random_weights_, write_tokenizer, write_vae

from .mutations import HOSTILE_INTS, HOSTILE_VALUES, mutate_header
from .targets_dit import header_and_data

# --- tiny valid inputs ---------------------------------------------------------------------------------------------

T5_TINY = T5Config(vocab_size=64, dim=8, attn_dim=8, ffn_dim=12, num_heads=2, num_layers=2, num_buckets=8)
CLIP_TINY = ClipVisionConfig(image_size=14, patch_size=7, dim=80, mlp_dim=16, num_heads=1, num_layers=3)
FLOAT_OR_NOT = [torch.int32, torch.int8, torch.bool, torch.uint8, torch.float8_e4m3fn, torch.complex64,
                torch.float64, torch.float16, torch.int64]


def _state(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    random_weights_(module, seed)
    return {key: tensor.contiguous() for key, tensor in module.state_dict().items()}


@functools.lru_cache(maxsize=None)
def t5_tensors() -> dict[str, torch.Tensor]:
    return _state(UMT5Encoder(T5_TINY), 0)


@functools.lru_cache(maxsize=None)
def clip_tensors() -> dict[str, torch.Tensor]:
    return {f"visual.{key}": tensor for key, tensor in _state(ClipVisionEncoder(CLIP_TINY), 1).items()}


@functools.lru_cache(maxsize=None)
def tokenizer_json() -> bytes:
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        return (write_tokenizer(Path(folder)) / "tokenizer.json").read_bytes()


@functools.lru_cache(maxsize=None)
def vae_tensors() -> dict[str, torch.Tensor]:
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        path = write_vae(Path(folder) / "v.pth", width=4)
        return dict(torch.load(str(path), weights_only=True))


# --- tensor-level mutations ----------------------------------------------------------------------------------------

def converted(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``tensor`` as ``dtype`` through finite float32 values: an earlier mutation may have left it NaN/Inf-filled,
    FP8 or complex, and converting those directly makes the generator raise, not the loader."""
    real = tensor.real if tensor.is_complex() else tensor
    return real.float().nan_to_num(0.0, 1.0, -1.0).to(dtype)


def filled(tensor: torch.Tensor, value: float) -> torch.Tensor:
    """``tensor``'s shape filled with a non-finite ``value``: its own dtype when that is float, else float32 (an
    earlier mutation may have made it an integer tensor, which cannot hold NaN/Inf). Filled in float32 and cast,
    as a file writer would: an FP8 tensor cannot be filled in place, and e4m3fn turns ±inf into ±448."""
    full = torch.full(tensor.shape, value)
    return full.to(tensor.dtype) if tensor.is_floating_point() else full


def mutate_tensors(rng: random.Random, tensors: dict[str, torch.Tensor], block_key: str) -> dict[str, torch.Tensor]:
    """One hostile variant of a network's tensors: keys dropped or added (huge block indices, thousands of empty
    blocks), wrong ranks, zero sizes, other dtypes, meta tensors, NaN/Inf."""
    tensors = dict(tensors)
    keys = list(tensors)
    for _ in range(rng.randrange(1, 4)):
        key = rng.choice(keys) if keys else "weight"  # (an empty file: mutations add to it)
        kind = rng.randrange(9)
        if kind == 0:
            tensors.pop(key, None)
        elif kind == 1:
            index = rng.choice([2, 3, 1000, 1000000, 10**12, 10**40])
            tensors[f"{block_key}{index}.{key.split('.', 2)[-1]}"] = torch.zeros(1)
        elif kind == 2:
            for index in range(rng.choice([10, 300])):
                tensors[f"{block_key}{index + 2}.x"] = torch.zeros(0)
        elif kind == 3:
            shape = rng.choice([(), (0,), (1,), (2, 0), (0, 2), (1, 1, 1, 1, 1, 1), (3, 5, 7)])
            tensors[key] = torch.zeros(shape)
        elif kind == 4 and key in tensors:
            tensors[key] = tensors[key].reshape(-1)
        elif kind == 5 and key in tensors:
            dtype = rng.choice(FLOAT_OR_NOT)
            tensors[key] = converted(tensors[key], dtype)
        elif kind == 6 and key in tensors:
            tensors[key] = filled(tensors[key], rng.choice([float("nan"), float("inf")]))
        elif kind == 7 and key in tensors:
            shape = list(tensors[key].shape) or [1]
            shape[rng.randrange(len(shape))] = rng.choice([0, 1, 3, 7])
            tensors[key] = torch.zeros(shape)
        elif kind == 8:
            tensors[rng.choice(["token_embedding.weight", "visual.patch_embedding.weight", "conv2.weight"])] = (
                torch.zeros(rng.choice([(4, 0), (0, 3, 7, 7), (1,), (16, 16, 1, 1, 1)])))
    return tensors


def _save_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    header, data = header_and_data({k: t for k, t in tensors.items() if t.dtype in _SAFETENSORS_DTYPES})
    path.write_bytes(struct.pack("<Q", len(_json(header))) + _json(header) + data)


def _json(header: dict) -> bytes:
    import json
    return json.dumps(header).encode()


_SAFETENSORS_DTYPES = {torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.uint8,
                       torch.int32, torch.int64, torch.bool, torch.float8_e4m3fn}


def write_network_file(rng: random.Random, folder: Path, stem: str, tensors: dict[str, torch.Tensor],
                       block_key: str) -> Path:
    """The tensors, mutated, as ``.pth`` (with meta / sparse tensors now and then) or ``.safetensors`` (with
    header-level mutations now and then)."""
    tensors = mutate_tensors(rng, tensors, block_key) if rng.random() < 0.85 else dict(tensors)
    if rng.random() < 0.4:
        path = folder / f"{stem}.pth"
        if rng.random() < 0.15:
            key = rng.choice(list(tensors))
            tensors[key] = rng.choice([torch.empty(tensors[key].shape, device="meta"),
                                       torch.zeros(3, 3).to_sparse()])
        torch.save(tensors, str(path))
        if rng.random() < 0.3:
            path.write_bytes(mutate_pth_bytes(rng, path.read_bytes()))
        return path
    path = folder / f"{stem}.safetensors"
    if rng.random() < 0.3:
        header, data = header_and_data({k: t for k, t in tensors.items() if t.dtype in _SAFETENSORS_DTYPES})
        path.write_bytes(mutate_header(rng, header, data))
    else:
        _save_safetensors(tensors, path)
    return path


# --- .pth pickles --------------------------------------------------------------------------------------------------

_DISALLOWED_GLOBALS = [("os", "system"), ("builtins", "eval"), ("subprocess", "Popen"), ("builtins", "getattr"),
                       ("torch", "load"), ("numpy", "frombuffer"), ("collections", "Counter"), ("x" * 300, "y")]


def _pickle_opcodes(rng: random.Random) -> bytes:
    """A short random pickle: protocol header, random opcodes with plausible arguments, STOP."""
    out = bytearray(b"\x80\x02")
    for _ in range(rng.randrange(1, 40)):
        roll = rng.randrange(12)
        if roll == 0:
            module, name = rng.choice(_DISALLOWED_GLOBALS)
            out += b"c" + module.encode() + b"\n" + name.encode() + b"\n"
        elif roll == 1:
            out += b"J" + struct.pack("<i", rng.choice([-1, 0, 2**31 - 1, 7]))
        elif roll == 2:
            text = rng.choice(["a", "storage", "torch", "\u00e9", "x" * 1000]).encode()
            out += b"X" + struct.pack("<I", len(text) if rng.random() < 0.9 else 2**31) + text
        elif roll == 3:
            out += b"B" + struct.pack("<I", 4) + b"abcd"
        else:
            out += bytes([rng.choice(b"()}]etsqhgRbNI.0210Q\x85\x86\x87\x88\x89\x8c\x94\x95")])
    return bytes(out) + (b"." if rng.random() < 0.8 else b"")


def _reduce_global(module: str, name: str, argument) -> bytes:
    """A protocol-2 pickle calling ``module.name(argument)``, as a malicious checkpoint's ``__reduce__`` writes."""
    return (b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n" + pickle.dumps((argument,), 2)[2:-1]
            + b"R.")


def mutate_pth_bytes(rng: random.Random, raw: bytes) -> bytes:
    """One hostile variant of a ``torch.save`` zip: entries renamed, data.pkl replaced or bit-flipped, truncated."""
    kind = rng.randrange(6)
    if kind == 0:
        cut = rng.randrange(len(raw))
        return raw[:cut]
    if kind == 1:
        data = bytearray(raw)
        for _ in range(rng.randrange(1, 9)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    source = zipfile.ZipFile(io.BytesIO(raw))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as target:
        names = source.namelist()
        renamed = rng.choice(names)
        for name in names:
            content = source.read(name)
            if kind == 2 and name == renamed:
                name = rng.choice(["../evil/data.pkl", "/abs/data.pkl", "x" * 300, "archive/data/999", "./",
                                   "archive\\data.pkl", "other/data.pkl", name + "\0"])
            elif kind == 3 and name.endswith("data.pkl"):
                content = _pickle_opcodes(rng) if rng.random() < 0.6 else _reduce_global(
                    *rng.choice(_DISALLOWED_GLOBALS), "echo owned")
            elif kind == 4 and name.endswith("data.pkl"):
                content = content[:rng.randrange(len(content))]
            elif kind == 5 and "/data/" in name and rng.random() < 0.5:
                content = content[:rng.randrange(len(content) + 1)]
            target.writestr(name, content)
    return buffer.getvalue()


def make_pth_case(rng: random.Random, folder: Path) -> tuple:
    path = folder / "weights.pth"
    tensors = {"a.weight": torch.randn(2, 3), "b": torch.arange(4)}
    roll = rng.random()
    if roll < 0.15:  # a legacy (non-zip) pickle of random opcodes or a disallowed global
        raw = _pickle_opcodes(rng) if rng.random() < 0.5 else _reduce_global(*rng.choice(_DISALLOWED_GLOBALS), "x")
        path.write_bytes(raw)
        return (path,)
    if roll < 0.3:  # valid pickles of things that are not a tensor dict
        value = rng.choice([[torch.zeros(1)], {"state_dict": {"a": 1}}, {1: torch.zeros(1)}, {}, None, 3,
                            {"model": {"a": torch.zeros(1)}, "epoch": 2}, {"a": {"b": torch.zeros(1)}},
                            {"a": torch.empty(2, device="meta")}, {"a": torch.zeros(2, 2).to_sparse()},
                            {"a": torch.zeros(2, dtype=torch.complex64)}])
        torch.save(value, str(path))
        return (path,)
    torch.save(tensors, str(path))
    path.write_bytes(mutate_pth_bytes(rng, path.read_bytes()))
    return (path,)


def read_every_tensor(path: Path) -> list[torch.Tensor]:
    """Open a checkpoint and read each tensor (what every component loader starts with)."""
    view = open_tensors(path)
    return [view[key] for key in view]


# --- umT5, CLIP, VAE files -----------------------------------------------------------------------------------------

def make_umt5_case(rng: random.Random, folder: Path) -> tuple:
    tokenizer = folder / "google" / "umt5-xxl"
    tokenizer.mkdir(parents=True)
    (tokenizer / "tokenizer.json").write_bytes(tokenizer_json())
    tensors = t5_tensors()
    if rng.random() < 0.2:  # a scaled-FP8 layout with hostile scales
        tensors = dict(tensors)
        tensors["blocks.0.attn.q.weight"] = tensors["blocks.0.attn.q.weight"].to(torch.float8_e4m3fn)
        tensors["blocks.0.attn.q.scale_weight"] = torch.ones(rng.choice([(1,), (), (8,), (3,), (0,), (8, 8)]))
        tensors["scaled_fp8"] = torch.zeros(rng.choice([2, 0]), dtype=torch.float8_e4m3fn)
    return write_network_file(rng, folder, "umt5", tensors, "blocks."), tokenizer


def load_umt5(path: Path, tokenizer: Path) -> None:
    load_text_encoder(path, tokenizer, dtype=torch.float32)


def make_clip_case(rng: random.Random, folder: Path) -> tuple:
    return (write_network_file(rng, folder, "clip_vision", clip_tensors(), "visual.transformer."),)


def load_clip(path: Path) -> None:
    load_clip_vision(path, dtype=torch.float32)


def make_vae_case(rng: random.Random, folder: Path) -> tuple:
    return (write_network_file(rng, folder, "vae", vae_tensors(), "decoder.upsamples."),)


def load_vae_file(path: Path) -> None:
    load_vae(path)


# --- LoRA key sets and shapes --------------------------------------------------------------------------------------

# A tiny DiT's tensors a LoRA may touch: two blocks of width 8 (ffn 16), a head.
_DIT_SHAPES = {f"blocks.{i}.{name}": shape for i in range(2) for name, shape in (
    ("self_attn.q.weight", (8, 8)), ("self_attn.q.bias", (8,)), ("cross_attn.k.weight", (8, 8)),
    ("ffn.0.weight", (16, 8)), ("ffn.2.weight", (8, 16)), ("modulation", (1, 6, 8)), ("norm3.weight", (8,)))}
_DIT_SHAPES.update({"patch_embedding.weight": (8, 4, 1, 2, 2), "head.head.weight": (16, 8)})
_LORA_STYLES = ("diffusion_model.{m}.lora_up.weight", "diffusion_model.{m}.lora_down.weight",
                "diffusion_model.{m}.alpha", "{m}.lora_A.weight", "{m}.lora_B.weight", "{m}.diff", "{m}.diff_b",
                "lora_unet_{u}.lora_up.weight", "lora_unet_{u}.lora_down.weight", "{m}.lora_mid.weight",
                "{m}.dora_scale", "{m}.hada_w1_a")


def _lora_tensors(rng: random.Random) -> dict[str, torch.Tensor]:
    tensors = {}
    for module in rng.sample(["blocks.0.self_attn.q", "blocks.1.ffn.0", "blocks.0.ffn.2", "patch_embedding",
                              "head.head", "blocks.0.cross_attn.k"], rng.randrange(1, 4)):
        out, *rest = _DIT_SHAPES[f"{module}.weight"]
        rank = rng.choice([1, 2, 4])
        tensors[f"diffusion_model.{module}.lora_up.weight"] = torch.randn(out, rank, *([1] * (len(rest) - 1)))
        tensors[f"diffusion_model.{module}.lora_down.weight"] = torch.randn(rank, *rest)
        if rng.random() < 0.5:
            tensors[f"diffusion_model.{module}.alpha"] = torch.tensor(float(rank))
    return tensors


def make_lora_case(rng: random.Random, folder: Path) -> tuple:
    tensors = _lora_tensors(rng)
    for _ in range(rng.randrange(0, 4)):
        if not tensors:  # every key popped: an empty LoRA file is the case
            break
        key = rng.choice(list(tensors))
        kind = rng.randrange(7)
        if kind == 0:  # rank 0, empty, 0-D
            tensors[key] = torch.zeros(rng.choice([(0,), (), (8, 0), (0, 8), (0, 0), (2,)]))
        elif kind == 1:  # up/down that do not fit each other or the model
            tensors[key] = torch.randn(rng.choice([(8, 3), (3, 8), (16, 16), (8, 2, 2), (1, 1, 1, 1, 1, 1)]))
        elif kind == 2:
            tensors[key] = filled(tensors[key], rng.choice([float("nan"), float("inf"), -float("inf")]))
        elif kind == 3:
            tensors[key] = converted(tensors[key], rng.choice(FLOAT_OR_NOT))
        elif kind == 4:  # other key styles and unknown or unsupported keys
            module = rng.choice(["blocks.0.self_attn.q", "blocks.9.ffn.0", "x.y", "blocks.10000000000000.ffn.0"])
            style = rng.choice(_LORA_STYLES)
            tensors[style.format(m=module, u=module.replace(".", "_"))] = torch.randn(rng.choice([(8, 2), (2, 8),
                                                                                                (8,), ()]))
        elif kind == 5:
            tensors[key] = torch.randn(rng.choice([(8,), (1, 6, 8), (16, 8)]))
            tensors[key.rsplit(".", 2)[0] + rng.choice([".diff", ".diff_b", ".modulation.diff"])] = tensors.pop(key)
        else:
            tensors.pop(key)
    path = write_network_file(rng, folder, "lora", tensors, "diffusion_model.blocks.") if rng.random() < 0.4 \
        else _plain_lora_file(rng, folder, tensors)
    return (path, rng.choice([1.0, -2.0, 0.0]), rng.choice([None, 0.0, 4.0]))


def _plain_lora_file(rng: random.Random, folder: Path, tensors: dict[str, torch.Tensor]) -> Path:
    if rng.random() < 0.5:
        path = folder / "lora.pth"
        torch.save(tensors, str(path))
    else:
        path = folder / "lora.safetensors"
        _save_safetensors(tensors, path)
    return path


def load_lora(path: Path, strength: float, alpha: float | None) -> None:
    """Read a LoRA, match it against a tiny DiT's shapes and compute every delta (what merge and attach do)."""
    plan = LoraPlan([AppliedLora(read_lora(path), strength, alpha)], _DIT_SHAPES, source="a tiny DiT")
    for key in plan.keys():
        plan.delta(key)


# --- component loader widget values --------------------------------------------------------------------------------

_FIELDS = ("text_encoder", "clip_vision", "vae", "tokenizer")


def make_widget_case(rng: random.Random, folder: Path) -> tuple:
    """A models root holding an official-looking folder and loose files, and a hostile widget choice."""
    official = folder / "wan" / "Wan2.1-T2V"
    official.mkdir(parents=True)
    for name in ("Wan2.1_VAE.pth", "models_t5_umt5-xxl-enc-bf16.pth"):
        (official / name).write_bytes(b"")
    (folder / "vae.safetensors").write_bytes(b"")
    choice = rng.choice([
        "wan/Wan2.1-T2V/", "vae.safetensors", "wan/", "../", "../../etc/passwd", "/etc/passwd", "/", "",
        "wan/../../x/", "a\0b", "x" * 5000, "x" * 300 + "/", ("y/" * 3000), "C:\\Windows\\", "wan\\..\\..\\",
        "~/", "wan/Wan2.1-T2V/Wan2.1_VAE.pth", "nonexistent/", "wan/Wan2.1-T2V/config.json", ".", "./",
        *HOSTILE_VALUES, *HOSTILE_INTS])
    if isinstance(choice, str) and rng.random() < 0.2:
        choice = choice + rng.choice(["/", "\n", " ", "\ud800", "é"])
    if rng.random() < 0.1:
        (official / "config.json").write_bytes(rng.choice([b"[" * 100000, b"{\"model_type\": [1]}", b"\xff",
                                                           b"{\"model_type\": \"ti2v\"}"]))
        (official / "Wan2.2_VAE.pth").write_bytes(b"")
    return folder, choice, rng.choice(_FIELDS)


def load_widget(root: Path, choice, field: str) -> None:
    resolve_component(root, choice, field)


TARGETS = {
    "pth_pickle": (make_pth_case, read_every_tensor),
    "umt5_file": (make_umt5_case, load_umt5),
    "clip_vision_file": (make_clip_case, load_clip),
    "vae_file": (make_vae_case, load_vae_file),
    "lora_keys_and_shapes": (make_lora_case, load_lora),
    "component_widgets": (make_widget_case, load_widget),
}
