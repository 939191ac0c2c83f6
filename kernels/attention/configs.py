"""Launch parameters of the 8-bit attention kernel: one small table, chosen by head dim and GPU generation.

`config_for(head_dim, capability)` picks the entry; `SWEEP` is the pruned grid `bench/attention.py --sweep` times
on the device, whose best rows go back into `CONFIGS`. The quantization blocks are the kernel's tiles (one Q scale
per BLOCK_M rows, one K scale per BLOCK_N keys), so the table fixes both.
"""

from __future__ import annotations

import dataclasses
import itertools


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    """block_m: query rows per program; block_n: keys per inner step; num_warps, num_stages: Triton's launch options;
    warp_specialize: Triton's warp-specialized inner loop (producer / consumer warps; Hopper and later with a
    Triton that offers it, otherwise ignored)."""

    block_m: int = 128
    block_n: int = 64
    num_warps: int = 8
    num_stages: int = 3
    warp_specialize: bool = False


# (head dim, arch) -> config. arch: "sm90" Hopper and newer, "sm89" Ada, "sm80" Ampere (bf16 P·V only), "other"
# (also the CPU emulation, which only takes the block sizes).
CONFIGS = {
    (128, "sm90"): AttentionConfig(128, 128, 8, 3),  # bench/attention.py --sweep, H200: 44.4 ms at 32,760 tokens
    (64, "sm90"): AttentionConfig(128, 64, 4, 3),
    (128, "sm89"): AttentionConfig(128, 64, 8, 2),
    (64, "sm89"): AttentionConfig(128, 64, 4, 2),
    (128, "sm80"): AttentionConfig(128, 64, 8, 2),
    (64, "sm80"): AttentionConfig(128, 64, 4, 2),
    (128, "other"): AttentionConfig(),
    (64, "other"): AttentionConfig(128, 64, 4, 2),
}
HEAD_DIMS = (64, 128)


def arch(capability: tuple[int, int] | None) -> str:
    if capability is None:
        return "other"
    if capability >= (9, 0):
        return "sm90"
    if capability >= (8, 9):
        return "sm89"
    return "sm80" if capability >= (8, 0) else "other"


def config_for(head_dim: int, capability: tuple[int, int] | None) -> AttentionConfig:
    """The table's config for this head dim (64 or 128) on a GPU of this compute capability (None: not CUDA)."""
    return CONFIGS[(head_dim, arch(capability))]


def sweep(capability: tuple[int, int] | None) -> list[AttentionConfig]:
    """The device sweep's grid: tiles 128/256 × 64/128, 4/8 warps, 2-4 stages, pruned of the combinations whose
    fp32 accumulator and score tiles cannot fit in registers (256 rows need 8 warps; 256 × 128 tiles are left out),
    plus warp specialization of the two tilings most likely to win on Hopper."""
    grid = []
    for block_m, block_n, warps, stages in itertools.product((128, 256), (64, 128), (4, 8), (2, 3, 4)):
        if block_m == 256 and (warps == 4 or block_n == 128):
            continue
        if block_m == 128 and block_n == 128 and warps == 4:
            continue
        grid.append(AttentionConfig(block_m, block_n, warps, stages))
    if arch(capability) == "sm90":
        grid += [AttentionConfig(128, 64, 8, 3, True), AttentionConfig(128, 128, 8, 3, True)]
    return grid
