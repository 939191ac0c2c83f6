"""UI-format (version 0.4) workflow JSON from a small graph description; used by `build.py`.

The pack's nodes give their sockets, widget order and defaults (so a widget added to a node lands in every
workflow with its default); core nodes' are listed here. Positions and sizes are computed: nodes stand in
columns, each column as wide as its widest node, each node as tall as its slots and widgets need, so that
nothing overlaps.
"""

from __future__ import annotations

import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
SEED_WIDGETS = ("seed", "noise_seed")
# Core nodes the workflows use: (socket inputs [(name, type, optional)], widgets [(name, default)], outputs).
CORE_NODES = {
    "LoadImage": ([], [("image", "example.png"), ("upload", "image")], [("IMAGE", "IMAGE"), ("MASK", "MASK")]),
    "CreateVideo": ([("images", "IMAGE", False), ("audio", "AUDIO", True)], [("fps", 16.0)], [("VIDEO", "VIDEO")]),
    "SaveVideo": ([("video", "VIDEO", False)], [("filename_prefix", "video/ComfyUI"), ("format", "auto"),
                                                ("codec", "auto")], []),
    "ModelSamplingSD3": ([("model", "MODEL", False)], [("shift", 3.0)], [("MODEL", "MODEL")]),
    "KSampler": ([("model", "MODEL", False), ("positive", "CONDITIONING", False),
                  ("negative", "CONDITIONING", False), ("latent_image", "LATENT", False)],
                 [("seed", 0), ("control_after_generate", "fixed"), ("steps", 20), ("cfg", 8.0),
                  ("sampler_name", "euler"), ("scheduler", "simple"), ("denoise", 1.0)], [("LATENT", "LATENT")]),
    "EmptyHunyuanLatentVideo": ([], [("width", 848), ("height", 480), ("length", 25), ("batch_size", 1)],
                                [("LATENT", "LATENT")]),
    "MarkdownNote": ([], [("text", "")], []),
    "LoadVideo": ([], [("file", "example.mp4"), ("upload", "video")], [("VIDEO", "VIDEO")]),
    "GetVideoComponents": ([("video", "VIDEO", False)], [], [("images", "IMAGE"), ("audio", "AUDIO"),
                                                              ("fps", "FLOAT")]),
    "TrimVideoLatent": ([("samples", "LATENT", False)], [("trim_amount", 0)], [("LATENT", "LATENT")]),
}
# Body heights the front end gives a node beyond its rows (title bar excluded, it sits above pos).
ROW, WIDGET_ROW, PADDING = 20, 24, 16
# LoadImage / SaveVideo previews, and the read-only report box web/report_text.js adds to the pack's reporting nodes.
EXTRA_HEIGHT = {"LoadImage": 290, "SaveVideo": 300, "WanExpressInspect": 110, "WanExpressConvert": 110,
                "WanExpressLoRA": 110}
MULTILINE_HEIGHT = 110
COLUMN_GAP, NODE_GAP, TITLE = 60, 50, 30
NOTE_WIDTH = 560
# Node widths that fit their longest widget value; others are 340 wide.
WIDTHS = {"WanExpressDiTLoader": 560, "WanExpressTextEncode": 420, "WanExpressSampler": 380,
          "WanExpressTextEncoderLoader": 400, "LoadImage": 340, "SaveVideo": 420, "WanExpressLoRA": 480,
          "KSampler": 340, "WanExpressConvert": 560}


class Out:
    """An output socket of a node in a `Graph`: what a link starts from."""

    def __init__(self, node: "Node", slot: int):
        self.node, self.slot = node, slot


class Node:
    def __init__(self, graph: "Graph", node_id: int, kind: str, column: int, title: str | None, inputs: dict):
        self.graph, self.id, self.type, self.column, self.title = graph, node_id, kind, column, title
        sockets, widgets, outputs = graph.spec(kind)
        self.sockets, self.outputs = sockets, outputs
        self.links = {name: value for name, value in inputs.items() if isinstance(value, Out)}
        values = {name: value for name, value in inputs.items() if not isinstance(value, Out)}
        unknown = set(inputs) - {name for name, _, _ in sockets} - {name for name, _ in widgets}
        if unknown:
            raise ValueError(f"{kind}: no input named {sorted(unknown)}")
        self.widgets = [(name, values.get(name, default)) for name, default in widgets]
        self.multiline = graph.multiline(kind)

    def out(self, name_or_slot: str | int = 0) -> Out:
        if isinstance(name_or_slot, int):
            return Out(self, name_or_slot)
        return Out(self, [name for name, _ in self.outputs].index(name_or_slot))

    def size(self) -> list[int]:
        if self.type == "MarkdownNote":
            lines = sum(1 + len(line) // 68 for line in self.widgets[0][1].splitlines())
            return [NOTE_WIDTH, 40 + 19 * lines]
        rows = max(len(self.sockets), len(self.outputs))
        visible = [name for name, _ in self.widgets if name not in ("control_after_generate", "upload")]
        height = PADDING + ROW * rows + WIDGET_ROW * (len(visible) + (1 if "seed" in visible else 0))
        height += MULTILINE_HEIGHT * len(self.multiline) + EXTRA_HEIGHT.get(self.type, 0)
        return [WIDTHS.get(self.type, 340), height]


class Graph:
    """One workflow: nodes added column by column; `write` lays them out and saves the UI-format JSON."""

    def __init__(self, name: str, summary: str):
        self.name, self.summary = name, summary
        self.nodes: list[Node] = []

    @staticmethod
    def spec(kind: str):
        """(sockets, widgets, outputs) of a node type: the pack's from its INPUT_TYPES, core's from CORE_NODES."""
        if kind in CORE_NODES:
            return CORE_NODES[kind]
        from wan_express.nodes import NODE_CLASS_MAPPINGS

        node_class = NODE_CLASS_MAPPINGS[kind]
        declared = node_class.INPUT_TYPES()
        sockets, widgets = [], []
        for group in ("required", "optional"):
            for name, spec in declared.get(group, {}).items():
                options = spec[1] if len(spec) > 1 else {}
                if isinstance(spec[0], (list, tuple)) or spec[0] in WIDGET_TYPES:
                    widgets.append((name, options.get("default", spec[0][0] if isinstance(spec[0], (list, tuple))
                                                      and spec[0] else "")))
                    if name in SEED_WIDGETS:
                        widgets.append(("control_after_generate", "fixed"))
                else:
                    sockets.append((name, spec[0], group == "optional"))
        names = getattr(node_class, "RETURN_NAMES", node_class.RETURN_TYPES)
        return sockets, widgets, list(zip(names, node_class.RETURN_TYPES))

    @staticmethod
    def multiline(kind: str) -> list[str]:
        if kind in CORE_NODES:
            return []
        from wan_express.nodes import NODE_CLASS_MAPPINGS

        declared = NODE_CLASS_MAPPINGS[kind].INPUT_TYPES()
        return [name for group in declared.values() for name, spec in group.items()
                if len(spec) > 1 and spec[1].get("multiline")]

    def add(self, kind: str, column: int, title: str | None = None, **inputs) -> Node:
        node = Node(self, len(self.nodes) + 1, kind, column, title, inputs)
        self.nodes.append(node)
        return node

    def note(self, text: str, title: str = "Models and where they go") -> Node:
        return self.add("MarkdownNote", -1, title, text=text)

    def save_video(self, frames: Out, column: int, fps: int = 16) -> None:
        """The core ending of every workflow: CreateVideo -> SaveVideo (mp4, h264) under output/video/."""
        video = self.add("CreateVideo", column, fps=float(fps), images=frames)
        self.add("SaveVideo", column + 1, video=video.out(), filename_prefix=f"video/{self.name}", format="mp4",
                 codec="h264")

    def layout(self) -> dict[int, tuple[list[int], list[int]]]:
        """Node id -> (pos, size): columns left to right, nodes stacked top to bottom in the order added."""
        columns = sorted({node.column for node in self.nodes})
        placed, x = {}, 0
        for column in columns:
            members = [node for node in self.nodes if node.column == column]
            width = max(node.size()[0] for node in members)
            y = 0
            for node in members:
                size = node.size()
                placed[node.id] = ([x, y + TITLE], size)
                y += TITLE + size[1] + NODE_GAP
            x += width + COLUMN_GAP
        return placed

    def order(self) -> dict[int, int]:
        """Execution order the front end stores: sources first (Kahn's algorithm, ties by id)."""
        remaining = {node.id: {out.node.id for out in node.links.values()} for node in self.nodes}
        order = {}
        while remaining:
            ready = sorted(node_id for node_id, needs in remaining.items() if not needs - set(order))
            for node_id in ready:
                order[node_id] = len(order)
                del remaining[node_id]
        return order

    def to_json(self, downloads: dict[str, tuple[str, str]]) -> dict:
        """The UI-format workflow; ``downloads``: single-file name -> (Hugging Face repo, models/ folder), listed
        in the node's ``properties.models`` so that the front end offers missing files for download."""
        links, link_of_input, links_of_output = [], {}, {}
        for node in self.nodes:
            for slot, (name, kind, _) in enumerate(node.sockets):
                if name in node.links:
                    source = node.links[name]
                    link_id = len(links) + 1
                    links.append([link_id, source.node.id, source.slot, node.id, slot, kind])
                    link_of_input[(node.id, name)] = link_id
                    links_of_output.setdefault((source.node.id, source.slot), []).append(link_id)
        placed, order = self.layout(), self.order()
        nodes = []
        for node in self.nodes:
            pos, size = placed[node.id]
            entry = {"id": node.id, "type": node.type, "pos": pos, "size": size, "flags": {}, "order": order[node.id],
                     "mode": 0,
                     "inputs": [{"name": name, "type": kind, **({"shape": 7} if optional else {}),
                                 "link": link_of_input.get((node.id, name))} for name, kind, optional in node.sockets],
                     "outputs": [{"name": name, "type": kind, "links": links_of_output.get((node.id, slot)),
                                  "slot_index": slot} for slot, (name, kind) in enumerate(node.outputs)]}
            if node.type == "MarkdownNote":
                entry.update(properties={}, color="#432", bgcolor="#653")
            else:
                core = node.type in CORE_NODES
                entry["properties"] = {"Node name for S&R": node.type, "cnr_id": "comfy-core" if core else "wan-express",
                                       "ver": "0.3.64" if core else "0.1.0"}
                files = [{"name": value, "url": f"https://huggingface.co/{downloads[value][0]}/resolve/main/{value}",
                          "directory": downloads[value][1]} for _, value in node.widgets if value in downloads]
                if files:
                    entry["properties"]["models"] = files
            entry["widgets_values"] = [value for _, value in node.widgets]
            if node.title:
                entry["title"] = node.title
            nodes.append(entry)
        return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"wan-express/{self.name}")), "revision": 0,
                "last_node_id": len(nodes), "last_link_id": len(links), "nodes": nodes, "links": links,
                "groups": [], "config": {}, "extra": {"wan_express": self.summary, "ds": {"scale": 0.6,
                                                                                            "offset": [40, 40]}},
                "version": 0.4}
