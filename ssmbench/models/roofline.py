"""What bounds one decode step: its work in closed form (FLOPs, bytes moved) set against the
run's measured matmul rate and copy bandwidth.

The generation results this project checks ([M1] §4.5: Mamba 4-5x a Transformer; [J]: Jamba
about 3x Mixtral) rest on decode being memory-bound: every step re-reads the weights and the
attention layers' KV cache, which grows with the context, while a Mamba layer's state stays
fixed. Whether a measured step is in that regime is a measurement, not a supposition: a step
that takes several times both its floors is above its floors, its time set by per-operation
overhead (kernel launches, Python dispatch) or by kernels that run below the machine's peaks.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..impls.checks import element_size
from .cache import kv_cache_bytes, mamba_state_bytes
from .configs import ModelConfig

# A step taking more than this many times its higher floor is bound by neither: a factor of 2
# leaves room for the floors' own inefficiency (a decode GEMV reaches about half the copy
# bandwidth), so that only a step dominated by neither floor is named so.
OVERHEAD_FACTOR = 2.0


@dataclass(frozen=True)
class StepWork:
    """One decode step of a whole batch (one new token per sequence).

    flops: 2 x weights used per token x batch (matmuls, LM head included) + causal attention over
    the cache (4 x context x heads x head dim per attention layer and sequence).
    bytes: the weights the batch touches (all experts a batch's tokens can route to), read once,
    the KV cache up to the context, read once, and the Mamba states, read and written."""

    flops: float
    bytes: float
    kv_bytes: float


def decode_step_work(config: ModelConfig, batch: int, context: int, dtype: str = "float32",
                     state_dtype: str | None = None) -> StepWork:
    e = element_size(dtype)
    active, full = config.param_count(active=True), config.param_count()
    lookups = config.learned_positions * config.d_model + (0 if config.tie_embeddings else config.vocab_size
                                                             * config.d_model)
    matmul_flops = 2 * batch * (active - lookups)
    attended = min(context, config.sliding_window) if config.sliding_window else context
    attention_flops = 4 * batch * attended * config.n_heads * config.head_dim * len(config.attention_layers)
    k, n = config.experts_per_token, config.n_experts
    touched = active if n <= 1 else active + (full - active) * (min(n, batch * k) - k) / (n - k)
    kv = kv_cache_bytes(config, batch, context, e, honour_window=True)
    state = 2 * mamba_state_bytes(config, batch, e, element_size(state_dtype or dtype))
    return StepWork(matmul_flops + attention_flops, touched * e + kv + state, kv)


@dataclass(frozen=True)
class Regime:
    """A measured step against its floors."""

    step_s: float
    compute_s: float  # the step's FLOPs at the measured matmul rate
    memory_s: float  # the step's bytes at the measured copy bandwidth
    kv_share: float  # of the step's bytes, the KV cache's

    @property
    def bound(self) -> str:
        if self.step_s > OVERHEAD_FACTOR * self.floor_s:
            return "above its floors"
        return "memory-bound" if self.memory_s >= self.compute_s else "compute-bound"

    @property
    def floor_s(self) -> float:
        return max(self.compute_s, self.memory_s)

    @property
    def over_floor(self) -> float:
        return self.step_s / self.floor_s

    @property
    def nearer(self) -> str:
        return "memory" if self.memory_s >= self.compute_s else "compute"

    def describe(self) -> str:
        return (f"{self.bound}: step {self.step_s * 1e3:.3g} ms, {self.over_floor:.1f}x its higher floor "
                f"(compute {self.compute_s * 1e3:.3g} ms, memory {self.memory_s * 1e3:.3g} ms); "
                f"KV cache {self.kv_share:.0%} of its bytes")


def regime(step_s: float, work: StepWork, matmul_flops_per_s: float, copy_bytes_per_s: float) -> Regime:
    """The floors at the run's measured ceilings (:func:`ssmbench.harness.env.measure_ceilings`)."""
    return Regime(step_s, work.flops / matmul_flops_per_s, work.bytes / copy_bytes_per_s,
                  work.kv_bytes / work.bytes if work.bytes else 0.0)
