"""A real ComfyUI, started headless on CPU for host tests, and the UI-to-API workflow conversion they need.

COMFYUI_DIR points at a ComfyUI checkout; COMFYUI_PYTHON is its interpreter (default: the current one), with the
pack's requirements.txt installed as ComfyUI-Manager would. The server runs with a temporary --base-directory whose
custom_nodes/ links to this repository under an unrelated folder name, so the checkout is never modified.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
COMFYUI_PYTHON = os.environ.get("COMFYUI_PYTHON", sys.executable)
requires_comfyui = pytest.mark.skipif(not COMFYUI_DIR, reason="COMFYUI_DIR is not set (no ComfyUI checkout to test "
                                                              "against)")
PACK_ROOT = Path(__file__).resolve().parents[1]
# Widgets the front end follows with a "control_after_generate" value (fixed/increment/randomize).
SEED_WIDGETS = ("seed", "noise_seed")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, url: str, log_path: Path):
        self.url, self.log_path = url, log_path

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, payload: dict):
        request = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def log(self) -> str:
        return self.log_path.read_text()

    def run_prompt(self, prompt: dict, timeout: float = 300) -> dict:
        """Queue an API-format prompt and wait for its history entry."""
        prompt_id = self.post("/prompt", {"prompt": prompt, "client_id": "wan-express-test"})["prompt_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                return history[prompt_id]
            time.sleep(0.5)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s:\n{self.log()[-3000:]}")


@contextlib.contextmanager
def running_comfyui(base: Path):
    """Start ComfyUI on a free loopback port with ``base`` as its base directory; yield a `Server`."""
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / "some-folder-name"
    if not link.exists():
        link.symlink_to(PACK_ROOT, target_is_directory=True)
    port = _free_port()
    log_path = base / "comfyui.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [COMFYUI_PYTHON, "main.py", "--cpu", "--listen", "127.0.0.1",
             "--port", str(port), "--disable-auto-launch", "--base-directory", str(base)],
            cwd=COMFYUI_DIR, stdout=log, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", log_path)
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise RuntimeError("ComfyUI exited while starting:\n" + server.log()[-3000:])
            try:
                server.get("/object_info/SaveImage")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError("ComfyUI did not answer within 180 s:\n" + server.log()[-3000:])
                time.sleep(0.5)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=30)


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """Convert a UI-format workflow (what the front end saves) into the API prompt its Run button sends.

    Widget values are matched to the node's widget inputs in INPUT_TYPES order (required, then optional); a seed
    widget is followed by the front end's control value and an image-upload combo by its upload button's value;
    both are skipped. Links become [node id, slot] pairs.
    """
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) != 0:
            continue
        info = object_info[node["type"]]
        declared = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        linked = {slot["name"] for slot in node.get("inputs", []) if slot.get("link") is not None}
        widgets = [name for name, spec in declared.items()
                   if name not in linked and (isinstance(spec[0], list) or spec[0] in ("INT", "FLOAT", "STRING",
                                                                                       "BOOLEAN", "COMBO"))]
        values = list(node.get("widgets_values", []))
        inputs = {}
        for name in widgets:
            if not values:
                raise ValueError(f"node {node['id']} ({node['type']}): no widget value left for {name!r}")
            inputs[name] = values.pop(0)
            options = declared[name][1] if len(declared[name]) > 1 else {}
            if name in SEED_WIDGETS or options.get("image_upload"):
                values.pop(0)  # the front end's own widget after it: control_after_generate, or the upload button
        if values:
            raise ValueError(f"node {node['id']} ({node['type']}): {len(values)} widget values too many: {values}")
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                link = links[slot["link"]]
                inputs[slot["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt
