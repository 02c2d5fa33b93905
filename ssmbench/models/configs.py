"""Published model shapes, each with where it was published.

A :class:`ModelConfig` describes any stack the suites meet: a Transformer (attention in every
layer), a pure Mamba model (a Mamba mixer in every layer, no MLP) and a hybrid such as Jamba
(attention in layer i when ``i % attn_layer_period == attn_layer_offset``, a Mamba mixer
elsewhere; a mixture-of-experts MLP when ``i % expert_layer_period == expert_layer_offset``).
The per-layer pattern is derived from these fields, never listed by hand, so that a scaled copy
(:meth:`ModelConfig.scaled`) keeps the real pattern.

:meth:`ModelConfig.param_count` counts weights from the shapes; the tests hold it against the
totals the papers state (``stated_params``), which checks the shapes themselves.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import cached_property


@dataclass(frozen=True)
class MambaMixer:
    """The Mamba mixer of a layer. version 1: selective scan over d_inner channels with state
    (d_inner, d_state); version 2: SSD over d_inner / headdim heads with state (headdim, d_state)."""

    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int = 0  # Mamba-1 only; 0: ceil(d_model / 16), mamba-ssm's "auto"
    version: int = 1
    headdim: int = 64  # Mamba-2 only
    ngroups: int = 1  # Mamba-2 only
    chunk_size: int = 256  # Mamba-2 only
    conv_bias: bool = True
    proj_bias: bool = False
    inner_norms: bool = False  # RMSNorms on dt, B and C (Jamba)

    def __post_init__(self):
        if self.version not in (1, 2):
            raise ValueError(f"MambaMixer: version must be 1 or 2, got {self.version}")


@dataclass(frozen=True)
class ModelConfig:
    name: str
    source: str  # where the shape was published
    n_layers: int
    d_model: int
    vocab_size: int  # as allocated (padded where the model pads it)
    # Attention layers.
    n_heads: int = 0
    n_kv_heads: int = 0  # fewer than n_heads: grouped-query attention
    head_dim: int = 0
    sliding_window: int = 0  # 0: every past token is attended (and cached)
    attn_layer_period: int = 1  # 0: no attention layer
    attn_layer_offset: int = 0
    # MLP (0: none, as in a Mamba-1 block).
    d_ff: int = 0
    mlp: str = "swiglu"  # "swiglu" (3 matrices), "gelu" or "gelu_tanh" (GPT-2's gelu_new; 2 matrices)
    n_experts: int = 1
    experts_per_token: int = 1
    expert_layer_period: int = 1
    expert_layer_offset: int = 0
    # Mamba layers (every layer that is not attention).
    mamba: MambaMixer | None = None
    norm: str = "rmsnorm"  # "rmsnorm" (a weight) or "layernorm" (weight and bias)
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0  # the rotary base of the attention layers
    rotary_fraction: float = 1.0  # the share of each head's channels that is rotated (GPT-NeoX: 0.25)
    # x + attn(norm(x)) + mlp(norm'(x)) in one step (GPT-NeoX) instead of one residual after another.
    parallel_residual: bool = False
    # Whether the top-k router weights are renormalised to sum to one (Mixtral) or kept as the
    # softmax over all experts (Jamba).
    router_renormalise: bool = True
    bias: bool = False  # biases on the attention and MLP projections
    learned_positions: int = 0  # rows of a learned position embedding (GPT-3); 0: none (RoPE)
    tie_embeddings: bool = False
    stated_params: tuple[str, str] | None = None  # (total, active) billions, as published (rounded)

    def __post_init__(self):
        if self.attention_layers and not (self.n_heads and self.n_kv_heads and self.head_dim):
            raise ValueError(f"{self.name}: attention layers need n_heads, n_kv_heads and head_dim")
        if self.attention_layers and self.n_heads % self.n_kv_heads:
            raise ValueError(f"{self.name}: n_heads={self.n_heads} must be a multiple of "
                             f"n_kv_heads={self.n_kv_heads}")
        if self.mamba_layers and self.mamba is None:
            raise ValueError(f"{self.name}: layers without attention need a MambaMixer")
        if self.mlp not in ("swiglu", "gelu", "gelu_tanh") or self.norm not in ("rmsnorm", "layernorm"):
            raise ValueError(f"{self.name}: mlp must be swiglu, gelu or gelu_tanh, norm rmsnorm or layernorm")
        if self.parallel_residual and not self.d_ff:
            raise ValueError(f"{self.name}: parallel_residual needs an MLP (d_ff > 0)")

    # The layer pattern.
    def mixer(self, layer: int) -> str:
        """"attention" or "mamba"."""
        period = self.attn_layer_period
        return "attention" if period and layer % period == self.attn_layer_offset else "mamba"

    def is_moe(self, layer: int) -> bool:
        return (self.d_ff > 0 and self.n_experts > 1
                and layer % self.expert_layer_period == self.expert_layer_offset)

    @cached_property
    def attention_layers(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.n_layers) if self.mixer(i) == "attention")

    @cached_property
    def mamba_layers(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.n_layers) if self.mixer(i) == "mamba")

    @property
    def d_inner(self) -> int:
        return self.mamba.expand * self.d_model if self.mamba else 0

    @property
    def rotary_dim(self) -> int:
        """Rotated channels per attention head: none with learned positions (GPT-3) or Mamba
        layers, which carry position themselves (Jamba's attention layers have no positional
        encoding); else ``rotary_fraction`` of the head, rounded down as GPT-NeoX does."""
        if self.learned_positions or self.mamba_layers:
            return 0
        return int(self.head_dim * self.rotary_fraction)

    @property
    def dt_rank(self) -> int:
        return (self.mamba.dt_rank or math.ceil(self.d_model / 16)) if self.mamba else 0

    def scaled(self, divisor: int) -> "ModelConfig":
        """The same layer pattern, head and expert counts, with every width divided by
        ``divisor`` (d_model, head_dim, d_ff, dt_rank, vocabulary): small enough to allocate."""
        def down(value: int) -> int:
            if value % divisor:
                raise ValueError(f"{self.name}: width {value} is not a multiple of {divisor}")
            return value // divisor

        mamba = self.mamba and dataclasses.replace(
            self.mamba, dt_rank=down(self.dt_rank),
            headdim=down(self.mamba.headdim) if self.mamba.version == 2 else self.mamba.headdim)
        return dataclasses.replace(
            self, name=f"{self.name}/{divisor}", d_model=down(self.d_model), head_dim=down(self.head_dim),
            d_ff=down(self.d_ff), vocab_size=math.ceil(self.vocab_size / divisor), mamba=mamba,
            stated_params=None)

    # Parameter counts, from the shapes.
    def param_count(self, active: bool = False) -> int:
        """Weights of the whole model; ``active``: with only ``experts_per_token`` experts of each
        mixture-of-experts layer (the parameters one token uses)."""
        d = self.d_model
        norm = d * (2 if self.norm == "layernorm" else 1)
        total = self.vocab_size * d * (1 if self.tie_embeddings else 2) + self.learned_positions * d + norm
        for layer in range(self.n_layers):
            total += norm + (self._attention_params() if self.mixer(layer) == "attention"
                             else self._mamba_params())
            if self.d_ff:
                experts = self.n_experts if self.is_moe(layer) else 1
                used = min(experts, self.experts_per_token) if active and experts > 1 else experts
                total += norm + used * self._mlp_params() + (d * experts if experts > 1 else 0)
        return total

    def _attention_params(self) -> int:
        q = self.n_heads * self.head_dim
        kv = self.n_kv_heads * self.head_dim
        weights = self.d_model * (q + 2 * kv) + q * self.d_model
        return weights + (q + 2 * kv + self.d_model if self.bias else 0)

    def _mlp_params(self) -> int:
        matrices = 3 if self.mlp == "swiglu" else 2
        return matrices * self.d_model * self.d_ff + ((matrices - 1) * self.d_ff + self.d_model if self.bias else 0)

    def _mamba_params(self) -> int:
        m, d, di = self.mamba, self.d_model, self.d_inner
        if m.version == 1:
            r, n = self.dt_rank, m.d_state
            total = d * 2 * di + di * r + di * 2 * n + r * di + di  # in_proj, x_proj, dt_proj (+bias)
            total += di * m.d_conv + (di if m.conv_bias else 0)  # depthwise conv
            total += di * n + di  # A_log, D
            total += di * d  # out_proj
            total += (2 * di + d if m.proj_bias else 0) + ((r + 2 * n) if m.inner_norms else 0)
            return total
        heads, gn = di // m.headdim, m.ngroups * m.d_state
        conv_dim = di + 2 * gn
        total = d * (2 * di + 2 * gn + heads)  # in_proj: z, x, B, C, dt
        total += conv_dim * m.d_conv + (conv_dim if m.conv_bias else 0)
        total += 3 * heads + di  # dt_bias, A_log, D; the gated RMSNorm
        total += di * d  # out_proj
        return total + ((2 * di + 2 * gn + heads + d) if m.proj_bias else 0)


_NEOX_VOCAB = 50280  # GPT-NeoX tokenizer, 50277 tokens padded to a multiple of 8 (mamba-ssm)
_M1 = "Gu & Dao, arXiv:2312.00752"
_MAMBA_README = "state-spaces/mamba README (released checkpoints)"


def _mamba(name: str, n_layers: int, d_model: int, stated: str, source: str = _MAMBA_README):
    return ModelConfig(name=name, source=source, n_layers=n_layers, d_model=d_model,
                       vocab_size=_NEOX_VOCAB, attn_layer_period=0, mamba=MambaMixer(),
                       tie_embeddings=True, stated_params=(stated, stated))


def _gpt3(name: str, n_layers: int, d_model: int, n_heads: int, head_dim: int, stated: str, source: str):
    return ModelConfig(name=name, source=source, n_layers=n_layers, d_model=d_model, vocab_size=_NEOX_VOCAB,
                       n_heads=n_heads, n_kv_heads=n_heads, head_dim=head_dim, d_ff=4 * d_model, mlp="gelu",
                       norm="layernorm", bias=True, learned_positions=2048, tie_embeddings=True,
                       stated_params=(stated, stated))


LLAMA2_7B = ModelConfig(
    name="Llama-2-7B", source="Touvron et al., arXiv:2307.09288; meta-llama/Llama-2-7b-hf config.json",
    n_layers=32, d_model=4096, vocab_size=32000, n_heads=32, n_kv_heads=32, head_dim=128,
    d_ff=11008, stated_params=("6.7", "6.7"))

MISTRAL_7B = ModelConfig(
    name="Mistral-7B", source="Jiang et al., arXiv:2310.06825; mistralai/Mistral-7B-v0.1 config.json",
    n_layers=32, d_model=4096, vocab_size=32000, n_heads=32, n_kv_heads=8, head_dim=128,
    d_ff=14336, sliding_window=4096, stated_params=("7.2", "7.2"))

MIXTRAL_8X7B = ModelConfig(
    name="Mixtral-8x7B", source="Jiang et al., arXiv:2401.04088; mistralai/Mixtral-8x7B-v0.1 config.json",
    n_layers=32, d_model=4096, vocab_size=32000, n_heads=32, n_kv_heads=8, head_dim=128,
    d_ff=14336, n_experts=8, experts_per_token=2, rope_theta=1e6, stated_params=("46.7", "12.9"))

JAMBA_V01 = ModelConfig(
    name="Jamba-v0.1", source="Lieber et al., arXiv:2403.19887 §2, Table 1; ai21labs/Jamba-v0.1 config.json",
    n_layers=32, d_model=4096, vocab_size=65536, n_heads=32, n_kv_heads=8, head_dim=128,
    attn_layer_period=8, attn_layer_offset=4, d_ff=14336, n_experts=16, experts_per_token=2,
    expert_layer_period=2, expert_layer_offset=1, norm_eps=1e-6, router_renormalise=False,
    mamba=MambaMixer(d_state=16, d_conv=4, expand=2, dt_rank=256, inner_norms=True),
    stated_params=("52", "12"))

MAMBA_130M = _mamba("Mamba-130M", 24, 768, "0.13")
MAMBA_370M = _mamba("Mamba-370M", 48, 1024, "0.37")
MAMBA_790M = _mamba("Mamba-790M", 48, 1536, "0.79")
MAMBA_1_4B = _mamba("Mamba-1.4B", 48, 2048, "1.4")
MAMBA_2_8B = _mamba("Mamba-2.8B", 64, 2560, "2.8")
# Named in [M1] §4.5 (generation throughput, untrained); its shape is not stated there. Twice the
# layers of the 6.7B Transformer at its width, the ratio every Mamba/Transformer pair of [M1] keeps;
# param_count gives 6.9B, which the tests hold it to.
MAMBA_6_9B = _mamba("Mamba-6.9B", 64, 4096, "6.9",
                    source=f"{_M1} §4.5 (size only; shape: 2x the layers of the 6.7B Transformer)")

# Mamba-2 checkpoints (state-spaces/mamba2-*): the Mamba-1 depths and widths, SSD mixer with
# d_state 128, headdim 64, ngroups 1, expand 2; vocabulary padded to a multiple of 16.
_MAMBA2_VOCAB = 50288


def _mamba2(name: str, n_layers: int, d_model: int, stated: str):
    return ModelConfig(name=name, source=f"Dao & Gu, arXiv:2405.21060; {_MAMBA_README}", n_layers=n_layers,
                       d_model=d_model, vocab_size=_MAMBA2_VOCAB, attn_layer_period=0,
                       mamba=MambaMixer(d_state=128, version=2), tie_embeddings=True,
                       stated_params=(stated, stated))


MAMBA2_130M = _mamba2("Mamba-2-130M", 24, 768, "0.13")
MAMBA2_370M = _mamba2("Mamba-2-370M", 48, 1024, "0.37")
MAMBA2_780M = _mamba2("Mamba-2-780M", 48, 1536, "0.78")
MAMBA2_1_3B = _mamba2("Mamba-2-1.3B", 48, 2048, "1.3")
MAMBA2_2_7B = _mamba2("Mamba-2-2.7B", 64, 2560, "2.7")

TRANSFORMER_125M = _gpt3("Transformer-125M", 12, 768, 12, 64, "0.125",
                         f"{_M1} Table 15 / Brown et al., arXiv:2005.14165 Table 2.1 (GPT-3 Small)")
TRANSFORMER_1_3B = _gpt3("Transformer-1.3B", 24, 2048, 32, 64, "1.3", f"{_M1} §4.5")
TRANSFORMER_6_7B = _gpt3("Transformer-6.7B", 32, 4096, 32, 128, "6.7",
                         f"{_M1} §4.5 / Brown et al., arXiv:2005.14165 Table 2.1 (GPT-3 6.7B)")

MODELS: dict[str, ModelConfig] = {m.name: m for m in (
    LLAMA2_7B, MISTRAL_7B, MIXTRAL_8X7B, JAMBA_V01,
    MAMBA_130M, MAMBA_370M, MAMBA_790M, MAMBA_1_4B, MAMBA_2_8B, MAMBA_6_9B,
    MAMBA2_130M, MAMBA2_370M, MAMBA2_780M, MAMBA2_1_3B, MAMBA2_2_7B,
    TRANSFORMER_125M, TRANSFORMER_1_3B, TRANSFORMER_6_7B,
)}


def get_model(name: str) -> ModelConfig:
    from ..impls.base import unknown

    if name not in MODELS:
        raise unknown("model", name, MODELS)
    return MODELS[name]
