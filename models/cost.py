"""FLOP counting on the forward that ran, with ``torch.utils.flop_counter.FlopCounterMode``.

Convention: one multiply-add = 2 FLOPs (FlopCounterMode's own). Known trap: in torch 2.13 and
2.14 the counter has no formula for the CPU kernel of ``scaled_dot_product_attention``
(``aten._scaled_dot_product_flash_attention_for_cpu``) and silently counts zero; we register
the same formula the counter uses for the CUDA flash kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

_aten = torch.ops.aten


def _without_dynamo_import() -> None:
    """Let FlopCounterMode run without importing ``torch._dynamo``.

    torch wraps every dispatch mode's ``__torch_dispatch__`` in ``torch._disable_dynamo``, which
    imports ``torch._dynamo`` on its first call, so that a compiled caller skips the mode's
    frames, and then caches the wrapped function on the original as ``__dynamo_disable``. That
    import took 2-3.5 s on a 2-core CPU: nearly all of a model's construction (its per-unit
    FLOPs are counted on a probe) and a quarter of the app's cold start. Nothing here is
    compiled, so the cache is filled with the function itself. Should torch's internals
    change, the wrapper imports as before: slower, never wrong.
    """
    from torch.utils import flop_counter

    mode = getattr(flop_counter, "_FlopCounterMode", None)
    raw = getattr(mode and mode.__dict__.get("__torch_dispatch__"), "__wrapped__", None)
    if raw is not None and not hasattr(raw, "__dynamo_disable"):
        raw.__dynamo_disable = raw


_without_dynamo_import()


def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _custom_mapping() -> dict[Any, Callable[..., int]]:
    mapping: dict[Any, Callable[..., int]] = {}
    op = getattr(_aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        mapping[op] = _shape_wrapper(_sdpa_cpu_flop)
    return mapping


def _shape_wrapper(fn: Callable[..., int]) -> Callable[..., int]:
    """FlopCounterMode passes tensors; its formulas take shapes (torch's ``shape_wrapper``)."""

    def wrapped(*args, out_val=None, **kwargs):
        shapes = [a.shape if isinstance(a, torch.Tensor) else a for a in args]
        return fn(*shapes, **kwargs)

    return wrapped


def count_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, int]:
    """Run ``fn(*args, **kwargs)`` and return its output and the FLOPs it executed."""
    with FlopCounterMode(display=False, custom_mapping=_custom_mapping()) as counter:
        out = fn(*args, **kwargs)
    return out, int(counter.get_total_flops())
