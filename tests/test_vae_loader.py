"""`load_vae` reads the official ``.pth`` (weights only) and the ComfyUI ``.safetensors`` twin to the same network.

Files are written here in the real layouts: a plain ``torch.save`` of the official module's state dict (what
``Wan2.1_VAE.pth`` / ``Wan2.2_VAE.pth`` are) and a flat safetensors file with the same official keys.
"""

import pickle

import pytest
import torch
from safetensors.torch import save_file

from wan_express.errors import InvalidInputError, MissingComponentError, ModelFormatError, UnsupportedModelError
from wan_express.loaders.vae import detect_vae_config, load_vae
from wan_express.models.vae2_1 import WAN21_MEAN, WAN21_STD, WanVAE21
from wan_express.models.vae2_2 import WanVAE22

from . import test_vae2_1, test_vae2_2
from .test_vae2_1 import REL_TOL, relative_error

# A bf16 twin loaded into fp32 compute differs by the weight rounding only.
BF16_REL_TOL = 3e-2


@pytest.fixture(scope="module")
def wan21_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vae21")
    reference = test_vae2_1.official_tiny()
    state = reference.state_dict()
    torch.save(state, folder / "Wan2.1_VAE.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "wan_2.1_vae.safetensors"))
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in state.items()},
              str(folder / "wan_2.1_vae_bf16.safetensors"))
    return folder, reference


def test_official_pth_loads_and_matches_the_official_network(wan21_files):
    folder, reference = wan21_files
    vae = load_vae(folder / "Wan2.1_VAE.pth")
    assert isinstance(vae, WanVAE21) and vae.z_dim == 16 and vae.stride == (4, 8, 8)
    assert vae.config.dim == vae.config.dec_dim == test_vae2_1.TINY_DIM
    video = test_vae2_1.clip(9, batch=1)
    with torch.no_grad():
        expected = reference.encode(video, test_vae2_1.official_scale())
    latent = vae.encode(video)
    assert relative_error(latent, expected) <= REL_TOL
    with torch.no_grad():
        expected_video = reference.decode(latent, test_vae2_1.official_scale())
    assert relative_error(vae.decode(latent), expected_video) <= REL_TOL


def test_comfyui_safetensors_twin_gives_the_same_outputs(wan21_files):
    folder, _ = wan21_files
    from_pth = load_vae(folder / "Wan2.1_VAE.pth")
    twin = load_vae(folder / "wan_2.1_vae.safetensors")
    video = test_vae2_1.clip(5, batch=1)
    latent = from_pth.encode(video)
    assert torch.equal(twin.encode(video), latent)
    assert torch.equal(twin.decode(latent), from_pth.decode(latent))
    half = load_vae(folder / "wan_2.1_vae_bf16.safetensors")  # the published twins are half precision
    assert half.conv2.weight.dtype == torch.float32
    assert relative_error(half.encode(video), latent) <= BF16_REL_TOL


def test_pth_is_read_weights_only_and_pickled_code_never_runs(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "Wan2.1_VAE.pth"
    with open(path, "wb") as handle:
        pickle.dump({"conv2.weight": Payload()}, handle)
    with pytest.raises(ModelFormatError, match="refused"):
        load_vae(path)
    assert not marker.exists()


def test_wan22_pth_loads_as_the_wan22_network(tmp_path):
    reference = test_vae2_2.official_tiny()
    torch.save(reference.state_dict(), tmp_path / "Wan2.2_VAE.pth")
    vae = load_vae(tmp_path / "Wan2.2_VAE.pth")
    assert isinstance(vae, WanVAE22) and vae.z_dim == 48 and vae.stride == (4, 16, 16)
    video = test_vae2_2.clip(5, batch=1)
    with torch.no_grad():
        expected = reference.encode(video, test_vae2_2.official_scale())
    assert relative_error(vae.encode(video), expected) <= REL_TOL


def test_dtype_device_and_latent_format_options(wan21_files):
    folder, _ = wan21_files
    normalized = load_vae(folder / "wan_2.1_vae.safetensors")
    raw = load_vae(folder / "wan_2.1_vae.safetensors", latent_format="comfy")
    video = test_vae2_1.clip(5, batch=1)
    mean, std = torch.tensor(WAN21_MEAN).view(1, 16, 1, 1, 1), torch.tensor(WAN21_STD).view(1, 16, 1, 1, 1)
    assert torch.allclose(raw.encode(video), normalized.encode(video) * std + mean, atol=1e-5)
    half = load_vae(folder / "wan_2.1_vae.safetensors", dtype=torch.bfloat16)
    assert half.decoder.conv1.weight.dtype == torch.bfloat16 and half.encode(video).dtype == torch.float32
    with pytest.raises(InvalidInputError, match="latent_format"):
        load_vae(folder / "wan_2.1_vae.safetensors", latent_format="scaled")


def test_released_shapes_are_detected():
    shapes = {key: tuple(t.shape) for key, t in _meta_state(WanVAE21).items()}
    config = detect_vae_config(shapes, "Wan2.1_VAE.pth")
    assert (config.version, config.dim, config.dec_dim, config.z_dim) == ("2.1", 96, 96, 16)
    shapes = {key: tuple(t.shape) for key, t in _meta_state(WanVAE22).items()}
    config = detect_vae_config(shapes, "Wan2.2_VAE.pth")
    assert (config.version, config.dim, config.dec_dim, config.z_dim) == ("2.2", 160, 256, 48)


def test_broken_and_foreign_files_are_refused_with_the_key(tmp_path, wan21_files):
    folder, reference = wan21_files
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}

    def write(name, tensors):
        save_file(tensors, str(tmp_path / name))
        return tmp_path / name

    with pytest.raises(ModelFormatError, match="not a Wan VAE"):
        load_vae(write("dit.safetensors", {"patch_embedding.weight": torch.zeros(4, 4)}))
    without = dict(state)
    del without["decoder.middle.1.proj.bias"]
    with pytest.raises(ModelFormatError, match="decoder.middle.1.proj.bias"):
        load_vae(write("missing.safetensors", without))
    reshaped = dict(state, **{"decoder.middle.1.proj.bias": torch.zeros(3)})
    with pytest.raises(ModelFormatError, match=r"wrong shape: decoder\.middle\.1\.proj\.bias: file \(3,\)"):
        load_vae(write("reshaped.safetensors", reshaped))
    rgba = dict(state, **{"encoder.conv1.weight": torch.zeros(8, 4, 3, 3, 3)})
    with pytest.raises(UnsupportedModelError, match="RGB"):
        load_vae(write("rgba.safetensors", rgba))
    with pytest.raises(ModelFormatError, match="unknown VAE file type"):
        load_vae(write("vae.bin", state))
    with pytest.raises(MissingComponentError, match="VAE file not found"):
        load_vae(tmp_path / "absent.pth")


def _meta_state(cls):
    with torch.device("meta"):
        return cls().state_dict()
