"""Build a network as a skeleton: every parameter and buffer on the meta device, no parameter init run.

Entry point: ``with skeleton(): model = Network(config)``. A loader builds the network only to learn its key set
and shapes before the file's tensors are assigned (`weights.assign_weights`), so the random init of each layer is
wasted work; on the meta device it holds no data anyway, but torch still dispatches each init call (Python
decompositions of ``uniform_`` and friends), which was most of a small VAE's build time. The mode below answers an
init call on a meta tensor with the tensor itself; the same call on a real tensor runs as usual.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch.overrides import TorchFunctionMode

# Init calls that only write values: ``nn.init`` entry points that dispatch through ``__torch_function__`` and the
# tensor methods the others end in (``ones_`` / ``zeros_`` fill, ``kaiming_*`` / ``xavier_*`` draw).
_INIT_CALLS = frozenset({
    torch.nn.init.uniform_, torch.nn.init.normal_, torch.nn.init.trunc_normal_, torch.nn.init.constant_,
    torch.nn.init.kaiming_uniform_, torch.Tensor.uniform_, torch.Tensor.normal_, torch.Tensor.fill_,
    torch.Tensor.zero_,
})


class _SkipMetaInit(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _INIT_CALLS:
            tensor = args[0] if args else kwargs.get("tensor")  # ``nn.init`` passes its tensor by keyword
            if isinstance(tensor, torch.Tensor) and tensor.is_meta:
                return tensor
        return func(*args, **kwargs)


@contextlib.contextmanager
def skeleton() -> Iterator[None]:
    """Modules built inside hold meta tensors (shapes and dtypes only) and skip their parameter init."""
    with torch.device("meta"), _SkipMetaInit():
        yield
