"""Language models built from a :class:`ModelConfig`: embeddings, the config's layer pattern of
pre-norm residual blocks (attention or Mamba mixer, then an MLP or mixture of experts where the
config has one; GPT-NeoX's parallel residual), a final norm and the LM head. :func:`build_model`
draws random weights (seeded): speed and memory do not depend on training;
:func:`~.checkpoints.from_pretrained` loads a checkpoint's.

Three entry points share the weights:

- ``forward(ids)``: logits of every position, the parallel path, no cache;
- ``prefill(ids, cache)``: the parallel path over a prompt that also fills ``cache`` (from
  :mod:`.cache`); returns the last position's logits;
- ``step(tokens, cache, pos)``: one decode step on the step ops; returns its logits.

``ops`` (an :class:`OpBackends`) is read by every layer at call time: ``model.ops = "op=backend"``
swaps the backends of the whole model.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..impls.base import dtype_name, parse_dtype
from .cache import KVCache, MambaState, ModelCache, build_cache
from .configs import ModelConfig
from .layers import MLP, OP_NAMES, Attention, Mamba2Mixer, MambaMixer, MoE, OpBackends, make_norm


def make_mixer(config: ModelConfig, layer: int) -> nn.Module:
    if config.mixer(layer) == "attention":
        return Attention(config.d_model, config.n_heads, config.n_kv_heads, config.head_dim,
                         rotary_dim=config.rotary_dim, rope_theta=config.rope_theta, bias=config.bias)
    m = config.mamba
    if m.version == 1:
        return MambaMixer(config.d_model, m.d_state, m.d_conv, m.expand, config.dt_rank,
                          conv_bias=m.conv_bias, bias=m.proj_bias, inner_norms=m.inner_norms, eps=config.norm_eps)
    return Mamba2Mixer(config.d_model, m.d_state, m.d_conv, m.expand, m.headdim, m.ngroups, m.chunk_size,
                       conv_bias=m.conv_bias, bias=m.proj_bias, eps=config.norm_eps)


class Block(nn.Module):
    """x + mixer(norm(x)), then x + mlp(norm(x)) where the layer has an MLP or experts; with
    ``parallel_residual``, x + mixer(norm(x)) + mlp(norm'(x)), both reading the block's input."""

    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.parallel = config.parallel_residual
        self.norm = make_norm(config.norm, config.d_model, config.norm_eps)
        self.mixer = make_mixer(config, layer)
        self.mlp = None
        if config.d_ff:
            self.mlp_norm = make_norm(config.norm, config.d_model, config.norm_eps)
            self.mlp = (MoE(config.d_model, config.d_ff, config.n_experts, config.experts_per_token,
                            config.router_renormalise)
                        if config.is_moe(layer) else MLP(config.d_model, config.d_ff, config.mlp, config.bias))

    def _residual(self, x, mixed):
        if self.mlp is None:
            return x + mixed
        if self.parallel:
            return x + mixed + self.mlp(self.mlp_norm(x))
        h = x + mixed
        return h + self.mlp(self.mlp_norm(h))

    def forward(self, x, ops, state=None, pos=0):
        return self._residual(x, self.mixer(self.norm(x), ops, state, pos))

    def step(self, x, ops, state, pos):
        return self._residual(x, self.mixer.step(self.norm(x), ops, state, pos))


class LanguageModel(nn.Module):
    def __init__(self, config: ModelConfig, ops: OpBackends | None = None):
        super().__init__()
        self.config, self.ops = config, ops
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.positions = nn.Embedding(config.learned_positions, config.d_model) if config.learned_positions else None
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = make_norm(config.norm, config.d_model, config.norm_eps)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.head.weight = self.embed.weight

    @property
    def ops(self) -> OpBackends:
        return self._ops

    @ops.setter
    def ops(self, spec) -> None:
        """An OpBackends, a mapping op -> backend or "op=backend,..." text (see OpBackends.of)."""
        self._ops = OpBackends.of(spec)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def weight_bytes(self) -> int:
        """Bytes of the weights as allocated (a tied matrix counted once)."""
        return sum(p.nbytes for p in self.parameters())

    def _embed(self, ids: torch.Tensor, pos: int) -> torch.Tensor:
        x = self.embed(ids)
        if self.positions is not None:
            end = pos + ids.shape[1]
            if end > self.config.learned_positions:
                raise ValueError(f"{self.config.name}: position {end - 1} is beyond its "
                                 f"{self.config.learned_positions} learned positions")
            x = x + self.positions.weight[pos:end]
        return x

    def _check_ids(self, ids: torch.Tensor) -> None:
        if ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"{self.config.name}: 'ids' must be integer token ids of shape (batch, length), "
                             f"got {ids.dtype} {tuple(ids.shape)}")

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (b, l) -> logits (b, l, vocab)."""
        self._check_ids(ids)
        x = self._embed(ids, 0)
        for block in self.layers:
            x = block(x, self.ops)
        return self.head(self.norm(x))

    def new_cache(self, batch: int, max_len: int, state_dtype=None) -> ModelCache:
        """The cache for ``batch`` sequences of up to ``max_len`` tokens, in the model's dtype and
        on its device (the SSM state in ``state_dtype``, default the model's, as mamba-ssm)."""
        if self.config.sliding_window and max_len > self.config.sliding_window:
            raise ValueError(f"{self.config.name}: sliding-window attention is not modelled; "
                             f"max_len={max_len} must stay within the window of {self.config.sliding_window}")
        for block in self.layers:
            if isinstance(block.mixer, Attention):
                block.mixer.prepare(max_len, self.device)
        return build_cache(self.config, batch, max_len, dtype=dtype_name(self.dtype), device=self.device,
                           state_dtype=state_dtype)

    @staticmethod
    def _layer_state(entry, pos: int):
        if isinstance(entry, KVCache):
            # The caller's position is the truth: a replayed CUDA graph runs no Python to count.
            entry.length = pos
            return entry
        if isinstance(entry, MambaState):
            return entry.conv, entry.ssm
        raise TypeError(f"unexpected cache entry {type(entry).__name__}")

    def prefill(self, ids: torch.Tensor, cache: ModelCache) -> torch.Tensor:
        """Run the prompt ids (b, l) through the parallel path, filling ``cache`` for a fresh
        sequence; returns the logits of the last position (b, vocab)."""
        self._check_ids(ids)
        x = self._embed(ids, 0)
        for block, entry in zip(self.layers, cache.layers):
            x = block(x, self.ops, self._layer_state(entry, 0), 0)
        return self.head(self.norm(x[:, -1]))

    def step(self, tokens: torch.Tensor, cache: ModelCache, pos: int) -> torch.Tensor:
        """The token (b,) at position ``pos`` through the step ops; returns logits (b, vocab)."""
        x = self._embed(tokens[:, None], pos)[:, 0]
        for block, entry in zip(self.layers, cache.layers):
            x = block.step(x, self.ops, self._layer_state(entry, pos), pos)
        return self.head(self.norm(x))

    @property
    def op_names(self) -> tuple[str, ...]:
        """The ops this model's layers call (prefill and decode), in OP_NAMES order."""
        used = set()
        if self.config.attention_layers:
            used.add("attention")
        if self.config.mamba_layers:
            used |= {"selective_scan" if self.config.mamba.version == 1 else "ssd", "causal_conv1d",
                     "causal_conv1d_update", "selective_state_update"}
        return tuple(op for op in OP_NAMES if op in used)

    @property
    def step_uses_position(self) -> bool:
        """Whether a decode step depends on its position (a KV cache or position embedding);
        a pure SSM's step does not, so one CUDA graph serves every position."""
        return bool(self.config.attention_layers) or self.positions is not None


def build_model(config: ModelConfig, *, ops=None, dtype="float32", device="cpu", seed: int = 0) -> LanguageModel:
    """A model of ``config`` with random weights drawn from ``seed`` on ``device`` (built there:
    a billion-parameter model initialises in seconds on a GPU), cast to ``dtype``, in eval mode."""
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        model = LanguageModel(config, ops)
        for module in model.modules():
            if isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
    return model.to(dtype=parse_dtype(dtype)).eval().requires_grad_(False)


def with_context(config: ModelConfig, max_len: int) -> ModelConfig:
    """``config`` with enough learned positions for ``max_len`` tokens (GPT-3 has 2048; the
    paper's generation benchmark runs 2048 + 128). Other models are returned unchanged."""
    if config.learned_positions and config.learned_positions < max_len:
        return dataclasses.replace(config, learned_positions=max_len)
    return config
