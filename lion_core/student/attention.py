"""Attention for packed training rows that computes only the attention that is used.

transformers handles packed rows (position ids restarting at 0, no attention mask) by building
a block-diagonal causal mask for sdpa/eager. That is correct but wasteful: the kernel still
computes every query against every key of the row (L x L per row) and the mask itself is L x L.
For rows of ~1024 tokens holding many short examples most of that work is thrown away, and on a
CPU it made packed training slower than padding.

`packed_attention` (registered with transformers as "lion_packed") instead splits each row at
its example boundaries and runs causal attention per example:

- on CUDA through PyTorch's variable-length flash attention (torch.nn.attention.varlen, one call
  per layer over all examples of the batch), when available;
- elsewhere with one causal `scaled_dot_product_attention` per example.

It is a training-only kernel: it needs no mask because packed rows carry their boundaries in
`position_ids`, and right padding (the padded layout) is harmless under causal attention. It
does not support a KV cache or left padding, so generation keeps the model's own attention.
"""

from __future__ import annotations

import inspect
import logging
import os
from contextlib import contextmanager
from typing import ClassVar

import torch
import torch.nn.functional as F

PACKED_ATTENTION = "lion_packed"

log = logging.getLogger(__name__)


def _segments(position_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """Per row, the (start, end) of each example: a new one begins wherever position is 0."""
    rows = []
    for pos in position_ids.tolist():
        starts = [i for i, p in enumerate(pos) if p == 0] or [0]
        if starts[0] != 0:
            starts.insert(0, 0)
        ends = [*starts[1:], len(pos)]
        rows.append(list(zip(starts, ends, strict=True)))
    return rows


class _Boundaries:
    """Example boundaries of the current forward pass, computed once and shared by every layer
    (the same position_ids tensor reaches all of them)."""

    source: torch.Tensor | None = None  # held, so its identity cannot be reused
    segments: ClassVar[list[list[tuple[int, int]]]] = []
    lengths: ClassVar[list[int]] = []  # of every example, row by row
    cu_seqlens: torch.Tensor | None = None
    max_len: int = 0

    @classmethod
    def of(cls, position_ids: torch.Tensor, batch: int, device) -> type[_Boundaries]:
        if position_ids is not cls.source:
            cls.source = position_ids
            cls.segments = _segments(position_ids.expand(batch, -1))
            width = position_ids.shape[-1]
            cu = [0]
            for r, row in enumerate(cls.segments):
                cu.extend(r * width + end for _, end in row)
            cls.cu_seqlens = torch.tensor(cu, dtype=torch.int32, device=device)
            cls.lengths = [end - start for row in cls.segments for start, end in row]
            cls.max_len = max(cls.lengths)
        return cls


def _varlen():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None, set()
    return varlen_attn, set(inspect.signature(varlen_attn).parameters)


_VARLEN, _VARLEN_PARAMS = _varlen()
_VARLEN_OK = [_VARLEN is not None]  # turned off after a failure


def _repeat_kv(x: torch.Tensor, groups: int, dim: int) -> torch.Tensor:
    return x if groups == 1 else x.repeat_interleave(groups, dim=dim)


def _varlen_attention(query, key, value, bounds, groups, scaling):
    """All examples of the batch in one varlen flash-attention call; [batch, tokens, heads, dim]."""
    batch, heads, tokens, dim = query.shape
    q = query.transpose(1, 2).reshape(batch * tokens, heads, dim)
    k = key.transpose(1, 2).reshape(batch * tokens, -1, dim)
    v = value.transpose(1, 2).reshape(batch * tokens, -1, dim)
    extra: dict = {}
    if "enable_gqa" in _VARLEN_PARAMS:
        extra["enable_gqa"] = groups > 1
    else:
        k, v = _repeat_kv(k, groups, 1), _repeat_kv(v, groups, 1)
    if "scale" in _VARLEN_PARAMS:
        extra["scale"] = scaling
    if "window_size" in _VARLEN_PARAMS:
        extra["window_size"] = (-1, 0)  # causal
    else:
        extra["is_causal"] = True
    cu, n = bounds.cu_seqlens, bounds.max_len
    out = _VARLEN(q, k, v, cu, cu, n, n, **extra)
    return out.reshape(batch, tokens, heads, dim), None


def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # [batch, heads, tokens, head_dim]
    key: torch.Tensor,  # [batch, kv_heads, tokens, head_dim]
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    position_ids: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Causal attention inside each packed example; returns [batch, tokens, heads, head_dim]."""
    if attention_mask is not None and attention_mask.dim() == 4 and not attention_mask.all():
        raise ValueError(f"{PACKED_ATTENTION} attention takes no padding mask (training only)")
    batch, heads, tokens, dim = query.shape
    groups = heads // key.shape[1]
    if position_ids is None:
        position_ids = torch.arange(tokens, device=query.device)[None]
    bounds = _Boundaries.of(position_ids, batch, query.device)

    if query.is_cuda and _VARLEN_OK[0] and query.dtype in (torch.float16, torch.bfloat16):
        try:
            return _varlen_attention(query, key, value, bounds, groups, scaling)
        except (RuntimeError, TypeError, ValueError) as exc:  # e.g. a head size flash lacks
            _VARLEN_OK[0] = False
            log.warning("varlen flash attention unavailable (%s); attending per example", exc)

    # One split and one concatenation over all examples of the batch (slicing each example out
    # separately would make autograd build a full-size zero gradient per slice).
    q, k, v = (
        x.transpose(0, 1).reshape(x.shape[1], batch * tokens, dim).split(bounds.lengths, dim=1)
        for x in (query, key, value)
    )
    parts = [
        F.scaled_dot_product_attention(
            qi[None],
            ki[None],
            vi[None],
            dropout_p=dropout if module.training else 0.0,
            is_causal=True,
            scale=scaling,
            enable_gqa=groups > 1,
        )[0]
        for qi, ki, vi in zip(q, k, v, strict=True)
    ]
    out = torch.cat(parts, dim=1).reshape(heads, batch, tokens, dim)
    return out.permute(1, 2, 0, 3).contiguous(), None


def register() -> str:
    """Make "lion_packed" a valid `attn_implementation` for transformers models."""
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED_ATTENTION, packed_attention)
    return PACKED_ATTENTION


def training_attention(attn_implementation: str, packing: bool) -> str:
    """The kernel to train with: packed rows under sdpa use `packed_attention`; eager keeps
    transformers' block-diagonal masks (slow, for checking); flash kernels see flattened rows."""
    if packing and attn_implementation == "sdpa":
        return register()
    return attn_implementation


def sdpa_backends() -> list:
    """The scaled-dot-product-attention kernels we allow: flash, memory-efficient and math.

    cuDNN attention is left out unless LION_CUDNN_SDPA=1: it builds an execution plan per new
    input shape, and our shapes change all the time (every decoding step, every padded batch).
    """
    from torch.nn.attention import SDPBackend

    allowed = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    if os.environ.get("LION_CUDNN_SDPA") == "1":
        allowed.insert(0, SDPBackend.CUDNN_ATTENTION)
    return allowed


@contextmanager
def sdpa_kernels():
    """Run the block with `sdpa_backends()` only."""
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel(sdpa_backends()):
        yield
