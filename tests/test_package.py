"""The pack imports without ComfyUI, exposes valid V1 node mappings and runs its demo from the command line."""

import subprocess
import sys

import wan_express
from wan_express import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS


def test_import_needs_no_comfyui():
    code = ("import sys, wan_express, wan_express.models, wan_express.loaders, wan_express.kernels, "
            "wan_express.sampling; host = [m for m in sys.modules if m.split('.')[0] in ('comfy', 'folder_paths')]; "
            "assert not host, host")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_node_mappings_are_v1_classes_with_valid_attributes():
    assert isinstance(NODE_CLASS_MAPPINGS, dict) and NODE_CLASS_MAPPINGS
    assert not hasattr(wan_express, "comfy_entrypoint")  # V1 and V3 must not both be exported
    for node_id, cls in NODE_CLASS_MAPPINGS.items():
        assert node_id.startswith("WanExpress") and isinstance(cls, type)
        assert node_id in NODE_DISPLAY_NAME_MAPPINGS
        inputs = cls.INPUT_TYPES()
        assert set(inputs) <= {"required", "optional", "hidden"}
        for name, spec in {**inputs.get("required", {}), **inputs.get("optional", {})}.items():
            assert isinstance(spec, tuple) and isinstance(spec[0], (str, list)), (node_id, name)
        assert isinstance(cls.RETURN_TYPES, tuple)
        assert len(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)) == len(cls.RETURN_TYPES)
        assert callable(getattr(cls, cls.FUNCTION))
        assert cls.CATEGORY.startswith("Wan Express")


def test_demo_runs_from_the_command_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "wan_express", "demo", "--out", str(tmp_path)],
                            capture_output=True, text=True, check=True)
    assert "video (1, 3, 9, 64, 96)" in result.stdout
    written = [path for path in tmp_path.iterdir() if path.name in ("demo.mp4", "demo.webp")]
    assert len(written) == 1 and f"wrote {written[0]}" in result.stdout
