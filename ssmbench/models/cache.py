"""Inference caches, preallocated per layer from a :class:`ModelConfig`'s layer pattern.

- attention layer: a static KV cache, K and V each (b, capacity, kv_heads, head_dim); capacity is
  the context length, or the sliding window when the model has one (a rolling buffer);
- Mamba layer: the conv state (b, conv_dim, d_conv) and the SSM state, (b, d_inner, d_state) for
  Mamba-1 or (b, nheads, headdim, d_state) for Mamba-2, as mamba-ssm allocates them: their size
  does not depend on the context.

Byte counts are ``tensor.nbytes`` summed over what was allocated; the closed forms
(:func:`kv_cache_bytes`, :func:`mamba_state_bytes`) are kept apart so that one checks the other.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..impls.base import parse_dtype
from .configs import ModelConfig


@dataclass
class KVCache:
    """One attention layer's keys and values. ``length`` counts the tokens written so far; with
    a window, token t lives in slot t % capacity."""

    k: torch.Tensor
    v: torch.Tensor
    window: int = 0
    length: int = 0

    @classmethod
    def allocate(cls, batch: int, capacity: int, kv_heads: int, head_dim: int, dtype, device,
                 window: int = 0) -> "KVCache":
        shape = (batch, capacity, kv_heads, head_dim)
        dtype = parse_dtype(dtype)
        return cls(torch.zeros(shape, dtype=dtype, device=device),
                   torch.zeros(shape, dtype=dtype, device=device), window)

    @property
    def capacity(self) -> int:
        return self.k.shape[1]

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write new keys and values (b, t, kv_heads, head_dim); return the ones attention now
        reads. In a full window the slots are in ring order, not time order: attention over
        cached keys (position already applied) does not depend on their order."""
        t = k.shape[1]
        if t > self.capacity or (not self.window and self.length + t > self.capacity):
            raise ValueError(f"KVCache: {t} new tokens after {self.length} exceed the capacity "
                             f"of {self.capacity}" + (" (a window holds at most that many)" if self.window else ""))
        slots = torch.arange(self.length, self.length + t, device=self.k.device) % self.capacity
        self.k[:, slots] = k
        self.v[:, slots] = v
        self.length += t
        used = min(self.length, self.capacity)
        return self.k[:, :used], self.v[:, :used]


@dataclass
class MambaState:
    """One Mamba layer's decode state, updated in place by the decode-step ops."""

    conv: torch.Tensor
    ssm: torch.Tensor

    @property
    def nbytes(self) -> int:
        return self.conv.nbytes + self.ssm.nbytes


@dataclass
class ModelCache:
    config: ModelConfig
    layers: list  # per layer: KVCache or MambaState

    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers)

    def bytes_by_kind(self) -> dict[str, int]:
        """{"kv": bytes of the attention layers' caches, "mamba": bytes of the Mamba states}."""
        out = {"kv": 0, "mamba": 0}
        for layer in self.layers:
            out["kv" if isinstance(layer, KVCache) else "mamba"] += layer.nbytes
        return out


def mamba_state_shapes(config: ModelConfig, batch: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(conv state shape, SSM state shape) of one Mamba layer, as mamba-ssm allocates them."""
    m, di = config.mamba, config.d_inner
    if m.version == 1:
        return (batch, di, m.d_conv), (batch, di, m.d_state)
    return (batch, di + 2 * m.ngroups * m.d_state, m.d_conv), (batch, di // m.headdim, m.headdim, m.d_state)


def build_cache(config: ModelConfig, batch: int, max_len: int, dtype="bfloat16", device="cpu",
                state_dtype=None, honour_window: bool = True) -> ModelCache:
    """Every layer's cache for ``batch`` sequences of up to ``max_len`` tokens. ``state_dtype``:
    the SSM state's dtype (default ``dtype``; float32 is the usual choice for long decoding).
    ``honour_window=False`` sizes a sliding-window model's cache as if it had none."""
    window = config.sliding_window if honour_window else 0
    layers = []
    for layer in range(config.n_layers):
        if config.mixer(layer) == "attention":
            capacity = min(max_len, window) if window else max_len
            layers.append(KVCache.allocate(batch, capacity, config.n_kv_heads, config.head_dim,
                                           dtype, device, window=window))
        else:
            conv, ssm = mamba_state_shapes(config, batch)
            layers.append(MambaState(torch.zeros(conv, dtype=parse_dtype(dtype), device=device),
                                     torch.zeros(ssm, dtype=parse_dtype(state_dtype or dtype), device=device)))
    return ModelCache(config, layers)


def kv_cache_bytes(config: ModelConfig, batch: int, tokens: int, bytes_per_element: int,
                   honour_window: bool = False) -> int:
    """2 (K, V) x attention layers x KV heads x head dim x tokens x bytes per element (x batch),
    the formula of Jamba's Table 1; ``honour_window`` caps tokens at the sliding window."""
    if honour_window and config.sliding_window:
        tokens = min(tokens, config.sliding_window)
    return (2 * len(config.attention_layers) * config.n_kv_heads * config.head_dim * tokens
            * bytes_per_element * batch)


def mamba_state_bytes(config: ModelConfig, batch: int, bytes_per_element: int,
                      state_bytes_per_element: int | None = None) -> int:
    """Mamba layers x (conv state + SSM state) elements x bytes, whatever the context length."""
    if not config.mamba_layers:
        return 0
    conv, ssm = mamba_state_shapes(config, batch)
    per_layer = (math.prod(conv) * bytes_per_element
                 + math.prod(ssm) * (state_bytes_per_element or bytes_per_element))
    return len(config.mamba_layers) * per_layer
