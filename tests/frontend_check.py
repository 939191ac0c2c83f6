"""Every shipped workflow opened in ComfyUI's real front end (headless Chromium): a check for the developer.

    PYTHONPATH=<folder holding wan_express> COMFYUI_DIR=... COMFYUI_PYTHON=... python -m tests.frontend_check

It starts ComfyUI like the host tests (tiny models under every name the workflows use, so every combo choice
exists), runs tests/frontend_check.mjs, which loads each workflow with ``app.loadGraphData`` and reads back the
nodes, widgets and ``app.graphToPrompt()``, and checks: no node type is missing, every widget value lies within
/object_info's min/max or choices, the front end's prompt equals `ui_to_api`'s (what the host tests run), and no
two nodes' boxes (title bar included) overlap. Screenshots go to a temporary folder (printed; ``--shots DIR`` picks
one; the front end's raw report lands there too). Needs node, ``npm install playwright-core@1`` in PLAYWRIGHT_DIR (default /tmp/fe) and Chromium (CHROMIUM,
default /usr/bin/chromium). Not part of the test suite: it needs a browser.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image

from .comfyui_server import running_comfyui, ui_to_api
from .test_comfyui_workflows import WORKFLOW_FILES, WORKFLOWS, write_models

SCRIPT = Path(__file__).with_suffix(".mjs")
FRONTEND_ONLY_WIDGETS = ("control_after_generate", "upload")


def widget_problems(node: dict, info: dict) -> list[str]:
    declared = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
    problems = []
    for widget in node["widgets"]:
        name, value = widget["name"], widget["value"]
        if name in FRONTEND_ONLY_WIDGETS or widget.get("display"):  # display-only (our report box): never sent
            continue
        if name not in declared:
            problems.append(f"widget {name!r} is not an input of {node['type']}")
            continue
        kind, options = declared[name][0], (declared[name][1] if len(declared[name]) > 1 else {})
        if isinstance(kind, list) or kind == "COMBO":
            choices = kind if isinstance(kind, list) else options.get("options", [])
            if value not in choices:
                problems.append(f"{name} = {value!r} is not one of its {len(choices)} choices")
        elif kind in ("INT", "FLOAT"):
            low, high = options.get("min", float("-inf")), options.get("max", float("inf"))
            if not low <= value <= high:
                problems.append(f"{name} = {value!r} is outside [{low}, {high}]")
    return problems


def overlaps(nodes: list[dict]) -> list[str]:
    found = []
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            (ax, ay, aw, ah), (bx, by, bw, bh) = a["box"], b["box"]
            if ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah:
                found.append(f"node {a['id']} ({a['type']}) overlaps node {b['id']} ({b['type']})")
    return found


def prompt_problems(frontend: dict, ours: dict) -> list[str]:
    """Differences between the front end's graphToPrompt output and `ui_to_api` (its ``_meta`` ignored; numbers
    compare by value, as the front end writes 1 for 1.0)."""
    frontend = {key: {"class_type": node["class_type"], "inputs": node["inputs"]} for key, node in frontend.items()}
    if frontend == ours:
        return []
    problems = [f"nodes only in the front end's prompt: {sorted(set(frontend) - set(ours))}"] if set(frontend) - set(
        ours) else []
    problems += [f"nodes only in ui_to_api's prompt: {sorted(set(ours) - set(frontend))}"] if set(ours) - set(
        frontend) else []
    for key in sorted(set(frontend) & set(ours)):
        if frontend[key] != ours[key]:
            problems.append(f"node {key}: front end {frontend[key]} != ui_to_api {ours[key]}")
    return problems


def check(base: Path, shots: Path) -> int:
    write_models(base / "models")
    (base / "input").mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(("example.png", "example_end.png")):
        pixels = (torch.rand(72, 120, 3, generator=torch.Generator().manual_seed(seed)) * 255).to(torch.uint8)
        Image.fromarray(pixels.numpy()).save(base / "input" / name)
    report_path = shots / "frontend_report.json"
    with running_comfyui(base) as server:
        object_info = server.get("/object_info")
        subprocess.run(["node", str(SCRIPT), server.url, str(report_path), str(shots),
                        *(str(WORKFLOWS / name) for name in WORKFLOW_FILES)], check=True, timeout=900)
    report = json.loads(report_path.read_text())
    failures = 0
    for name in WORKFLOW_FILES:
        result = report[name]
        problems = [f"node {node['id']}: type {node['type']} is not registered in the front end"
                    for node in result["nodes"] if not node["registered"]]
        problems += [f"node {node['id']} ({node['type']}): {problem}" for node in result["nodes"]
                     if node["type"] in object_info for problem in widget_problems(node, object_info[node["type"]])]
        problems += prompt_problems(result["prompt"], ui_to_api(json.loads((WORKFLOWS / name).read_text()),
                                                                object_info))
        problems += overlaps(result["nodes"])
        failures += bool(problems)
        print(f"{'FAIL' if problems else 'ok  '} {name} ({len(result['nodes'])} nodes) -> {result['screenshot']}")
        for problem in problems:
            print(f"     {problem}")
    if report["console_errors"]:
        print("front-end console errors (the frontend logs a TypeError reading 'id' on every load; harmless):")
        for line in sorted(set(report["console_errors"])):
            print(f"     {line[:300]}")
    print(f"{len(WORKFLOW_FILES) - failures} of {len(WORKFLOW_FILES)} workflows pass; screenshots in {shots}")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=Path, help="folder for the screenshots (default: a new temporary one)")
    args = parser.parse_args(argv)
    if not os.environ.get("COMFYUI_DIR"):
        parser.error("set COMFYUI_DIR to a ComfyUI checkout (and COMFYUI_PYTHON to its interpreter)")
    shots = args.shots or Path(tempfile.mkdtemp(prefix="wan_express_frontend_"))
    shots.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="wan_express_frontend_base_") as base:
        return check(Path(base), shots)


if __name__ == "__main__":
    sys.exit(main())
