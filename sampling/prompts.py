"""Default negative prompts of the official Wan configs (spec sampling.md §9).

Entry point: `negative_prompt(text, task)` returns the user's text, or the official default for the model when it
is empty. The negative prompt only matters when CFG is on (guidance ≠ 1); distilled runs never encode it.
"""

from __future__ import annotations

DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，"
    "残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
    "三条腿，背景人很多，倒着走")

# Wan2.1 I2V prefixes "camera shake,"; FLF2V (a copy of the I2V config) prefixes "shot change," to that.
_WAN21_I2V_NEGATIVE = "镜头晃动，" + DEFAULT_NEGATIVE_PROMPT
_DEFAULTS = {
    "wan2.1-i2v": _WAN21_I2V_NEGATIVE,
    "wan2.1-flf2v": "镜头切换，" + _WAN21_I2V_NEGATIVE,
}


def negative_prompt(text: str, model: str = "") -> str:
    """The negative prompt to encode.

    Args:
        text: what the user typed; used unchanged unless it is empty or blank.
        model: ``"wan2.1-i2v"`` or ``"wan2.1-flf2v"`` select their own defaults; anything else (Wan2.1 T2V,
            every Wan2.2 model) gets `DEFAULT_NEGATIVE_PROMPT`.
    """
    if text.strip():
        return text
    return _DEFAULTS.get(model, DEFAULT_NEGATIVE_PROMPT)
