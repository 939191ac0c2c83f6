"""A real ComfyUI, started headless on CPU for host tests, and the UI-to-API workflow conversion they need.

COMFYUI_DIR points at a ComfyUI checkout; COMFYUI_PYTHON is its interpreter (default: the current one), with the
pack's requirements.txt installed as ComfyUI-Manager would. The server runs with a temporary --base-directory whose
custom_nodes/ links to this repository under an unrelated folder name, so the checkout is never modified.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
COMFYUI_PYTHON = os.environ.get("COMFYUI_PYTHON", sys.executable)
requires_comfyui = pytest.mark.skipif(not COMFYUI_DIR, reason="COMFYUI_DIR is not set (no ComfyUI checkout to test "
                                                              "against)")
PACK_ROOT = Path(__file__).resolve().parents[1]
# Widgets the front end follows with a "control_after_generate" value (fixed/increment/randomize).
SEED_WIDGETS = ("seed", "noise_seed")
# Front-end-only node types: never sent to the server (the front end's graphToPrompt drops them too).
VIRTUAL_NODES = ("Note", "MarkdownNote")


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

    def queue(self, prompt: dict, client_id: str = "wan-express-test") -> str:
        """Queue an API-format prompt; its progress goes to the websocket of ``client_id``. Returns its id."""
        return self.post("/prompt", {"prompt": prompt, "client_id": client_id})["prompt_id"]

    def interrupt(self) -> None:
        """POST /interrupt: stops the running prompt at its next interrupt check (its answer has no body)."""
        request = urllib.request.Request(self.url + "/interrupt", data=b"{}",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()

    def websocket(self, client_id: str) -> "WebSocket":
        host, port = self.url.removeprefix("http://").split(":")
        return WebSocket(host, int(port), f"/ws?clientId={client_id}")

    def run_prompt(self, prompt: dict, timeout: float = 300) -> dict:
        """Queue an API-format prompt and wait for its history entry."""
        return self.wait(self.queue(prompt), timeout)

    def wait(self, prompt_id: str, timeout: float = 300) -> dict:
        """The history entry of a queued prompt, once it finished (success, error or interrupted)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                return history[prompt_id]
            time.sleep(0.5)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s:\n{self.log()[-3000:]}")


class WebSocket:
    """A minimal RFC 6455 client, enough for ComfyUI's ``/ws``: JSON text messages and binary preview frames
    (unfragmented or fragmented, unmasked from the server); pings are answered, our frames are masked."""

    GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def __init__(self, host: str, port: int, path: str, timeout: float = 60):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                           ).encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._recv()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        accept = base64.b64encode(hashlib.sha1((key + self.GUID).encode()).digest()).decode()
        if not head.startswith(b"HTTP/1.1 101") or accept.encode() not in head:
            raise ConnectionError(f"websocket handshake refused: {head.decode(errors='replace')}")

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("websocket closed by the server")
        return chunk

    def _read(self, count: int) -> bytes:
        while len(self.buffer) < count:
            self.buffer += self._recv()
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        length = len(payload)
        header = bytes([0x80 | opcode]) + (bytes([0x80 | length]) if length < 126 else
                                           bytes([0x80 | 126]) + struct.pack(">H", length))
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def receive(self, timeout: float = 60) -> dict | bytes:
        """The next message: a parsed JSON object for text, the raw bytes for binary."""
        self.sock.settimeout(timeout)
        message, kind = b"", None
        while True:
            first, second = self._read(2)
            opcode, length = first & 0x0F, second & 0x7F
            if length == 126:
                (length,) = struct.unpack(">H", self._read(2))
            elif length == 127:
                (length,) = struct.unpack(">Q", self._read(8))
            mask = self._read(4) if second & 0x80 else None
            payload = self._read(length)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x9:
                self._send(0xA, payload)
                continue
            if opcode == 0x8:
                raise ConnectionError("websocket closed by the server")
            if opcode in (0x1, 0x2):
                kind = opcode
            if opcode in (0x0, 0x1, 0x2):
                message += payload
                if first & 0x80:
                    return json.loads(message) if kind == 0x1 else message

    def until_done(self, prompt_id: str, on_message=None, timeout: float = 300) -> list:
        """Every message up to the end of ``prompt_id`` (``executing`` with node None, or an error or
        interruption of it); ``on_message(message)`` sees each as it arrives."""
        messages, deadline = [], time.monotonic() + timeout
        while True:
            message = self.receive(max(1.0, deadline - time.monotonic()))
            messages.append(message)
            if on_message is not None:
                on_message(message)
            if isinstance(message, dict) and message["data"].get("prompt_id") == prompt_id and (
                    (message["type"] == "executing" and message["data"].get("node") is None)
                    or message["type"] in ("execution_error", "execution_interrupted")):
                return messages

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._send(0x8, b"")
        self.sock.close()


def new_client_id() -> str:
    return uuid.uuid4().hex


# Run by COMFYUI_PYTHON (it has PyAV, which core's SaveVideo writes with): an mp4's decoded RGB frames.
_READ_VIDEO = """
import json, sys
import av, numpy
with av.open(sys.argv[1]) as container:
    stream = container.streams.video[0]
    frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    numpy.save(sys.argv[2], numpy.stack(frames))
    print(json.dumps({"codec": stream.codec_context.name, "fps": float(stream.average_rate)}))
"""


# Run by COMFYUI_PYTHON: frames (a .npy of uint8 [N, H, W, 3]) written as an mp4 (MPEG-4 part 2, which every FFmpeg
# build encodes).
_WRITE_VIDEO = """
import sys
import av, numpy
frames = numpy.load(sys.argv[2])
with av.open(sys.argv[1], "w") as container:
    stream = container.add_stream("mpeg4", rate=int(sys.argv[3]))
    stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    for frame in frames:
        container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode())
"""


def write_mp4(path: Path, frames, fps: int = 16) -> Path:
    """frames [N, H, W, 3] in [0, 1] (a torch tensor) as an mp4 for LoadVideo, encoded by PyAV in ComfyUI's Python
    (the test venv has no PyAV)."""
    import numpy
    import torch

    source = path.with_suffix(".frames.npy")
    numpy.save(source, (frames * 255).to(torch.uint8).numpy())
    result = subprocess.run([COMFYUI_PYTHON, "-c", _WRITE_VIDEO, str(path), str(source), str(fps)],
                            capture_output=True, text=True, timeout=120)
    source.unlink()
    if result.returncode != 0:
        raise RuntimeError(f"could not write {path}: {result.stderr[-3000:]}")
    return path


def read_video(path: Path):
    """(frames uint8 [F, H, W, 3], {"codec", "fps"}) of a video file, decoded by PyAV in ComfyUI's Python."""
    import numpy

    target = path.with_suffix(".frames.npy")
    result = subprocess.run([COMFYUI_PYTHON, "-c", _READ_VIDEO, str(path), str(target)], capture_output=True,
                            text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"could not read {path}: {result.stderr[-3000:]}")
    frames = numpy.load(target)
    target.unlink()
    return frames, json.loads(result.stdout.strip().splitlines()[-1])


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
    both are skipped. Links become [node id, slot] pairs. Notes (front-end-only nodes) and muted or bypassed nodes
    are left out, as the front end leaves them out.
    """
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) != 0 or node["type"] in VIRTUAL_NODES:
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
            if name in SEED_WIDGETS or options.get("image_upload") or options.get("video_upload"):
                values.pop(0)  # the front end's own widget after it: control_after_generate, or the upload button
        if values:
            raise ValueError(f"node {node['id']} ({node['type']}): {len(values)} widget values too many: {values}")
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                link = links[slot["link"]]
                inputs[slot["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt
