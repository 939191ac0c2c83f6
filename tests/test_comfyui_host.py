"""The pack loads in a real ComfyUI: every node appears in /object_info and the log shows no import failure.

Runs only when COMFYUI_DIR points at a ComfyUI checkout (COMFYUI_PYTHON: its interpreter, default the current one).
ComfyUI starts headless on CPU with a temporary --base-directory whose custom_nodes/ links to this repository
under an unrelated folder name, so the checkout itself is never modified.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from wan_express import NODE_CLASS_MAPPINGS

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
PACK_ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not COMFYUI_DIR, reason="COMFYUI_DIR is not set (no ComfyUI checkout to test against)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_every_node_is_registered_in_a_running_comfyui(tmp_path):
    base = tmp_path / "base"
    (base / "custom_nodes").mkdir(parents=True)
    (base / "custom_nodes" / "some-folder-name").symlink_to(PACK_ROOT, target_is_directory=True)
    port = free_port()
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    log_path = tmp_path / "comfyui.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
             "--base-directory", str(base)],
            cwd=COMFYUI_DIR, stdout=log, stderr=subprocess.STDOUT)
    try:
        object_info = None
        deadline = time.monotonic() + 180
        while object_info is None and time.monotonic() < deadline:
            assert server.poll() is None, log_path.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/object_info", timeout=5) as response:
                    object_info = json.loads(response.read())
            except OSError:
                time.sleep(0.5)
        log_text = log_path.read_text()
        assert object_info is not None, "ComfyUI did not answer /object_info within 180 s:\n" + log_text[-3000:]
    finally:
        server.terminate()
        server.wait(timeout=30)
    missing = [node for node in NODE_CLASS_MAPPINGS if node not in object_info]
    assert not missing, f"nodes missing from /object_info: {missing}\n{log_text[-3000:]}"
    assert "IMPORT FAILED" not in log_text and "Cannot import" not in log_text, log_text[-3000:]
    for node in NODE_CLASS_MAPPINGS:
        assert object_info[node]["category"].startswith("Wan Express")
