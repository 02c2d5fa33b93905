"""The layers of the models, each computing its sequence mixing with ssmbench's public ops.

Every mixer has two paths over the same weights:

- ``forward(x, ops, state=None, pos=0)``: the parallel path over a whole sequence (training
  shape, and prefill: with ``state`` it also leaves the inference state behind: the last SSM
  state and conv inputs, or the keys and values written into a static cache at ``pos``);
- ``step(x, ops, state, pos)``: one decode token through the step ops (selective_state_update,
  causal_conv1d_update, attention with one query over the cache).

``ops`` (:class:`OpBackends`) names the backend of each op, so one choice reaches every layer.
The SSM parameters (A, D, dt bias) are stored in the model's dtype, as mamba-ssm's generation
benchmark loads them, and enter the ops in float32.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .. import api
from ..impls.registry import OP_NAMES


@dataclass(frozen=True)
class OpBackends:
    """The backend each op runs inside a model; "auto" lets the registry choose (and record)."""

    selective_scan: str = "auto"
    ssd: str = "auto"
    causal_conv1d: str = "auto"
    causal_conv1d_update: str = "auto"
    selective_state_update: str = "auto"
    attention: str = "auto"

    @classmethod
    def of(cls, spec: "OpBackends | Mapping[str, str] | str | None") -> "OpBackends":
        """From an OpBackends, a mapping op -> backend, or text "op=backend,op=backend" ("auto"
        or None: every op on auto)."""
        if spec is None or spec == "auto":
            return cls()
        if isinstance(spec, OpBackends):
            return spec
        if isinstance(spec, str):
            pairs = {}
            for item in filter(None, (s.strip() for s in spec.split(","))):
                op, sep, name = item.partition("=")
                if not sep:
                    raise ValueError(f"backends: expected op=backend[,op=backend...], got {item!r}")
                pairs[op.strip()] = name.strip()
            spec = pairs
        bad = sorted(set(spec) - set(OP_NAMES))
        if bad:
            raise ValueError(f"backends: unknown op(s) {', '.join(bad)}; known: {', '.join(OP_NAMES)}")
        return replace(cls(), **spec)

    def text(self) -> str:
        """The non-default choices as "op=backend,..." ("auto" when every op is on auto)."""
        chosen = [f"{f.name}={getattr(self, f.name)}" for f in fields(self) if getattr(self, f.name) != "auto"]
        return ",".join(chosen) or "auto"


class RMSNorm(nn.Module):
    """x / rms(x) * weight, the rms taken over groups of ``group_size`` channels (default: all),
    in float32. Mamba-2's gated variant multiplies by silu(gate) first."""

    def __init__(self, dim: int, eps: float = 1e-5, group_size: int | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps, self.group_size = eps, group_size or dim

    def forward(self, x: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        h = x.float()
        if gate is not None:
            h = h * F.silu(gate.float())
        g = h.unflatten(-1, (-1, self.group_size))
        h = (g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps)).flatten(-2)
        return (h * self.weight.float()).to(x.dtype)


def make_norm(kind: str, dim: int, eps: float = 1e-5) -> nn.Module:
    if kind == "rmsnorm":
        return RMSNorm(dim, eps)
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps)
    raise ValueError(f"norm must be 'rmsnorm' or 'layernorm', got {kind!r}")


class MLP(nn.Module):
    """GPT-style GELU (d -> d_ff -> d; "gelu_tanh": the tanh approximation, GPT-2's gelu_new) or
    Llama-style SwiGLU (silu(x W1) * x W3, then W2)."""

    def __init__(self, dim: int, d_ff: int, kind: str = "gelu", bias: bool = False):
        super().__init__()
        if kind not in ("gelu", "gelu_tanh", "swiglu"):
            raise ValueError(f"mlp must be 'gelu', 'gelu_tanh' or 'swiglu', got {kind!r}")
        self.kind = kind
        self.up = nn.Linear(dim, d_ff * (2 if kind == "swiglu" else 1), bias=bias)
        self.down = nn.Linear(d_ff, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        if self.kind == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h, approximate="tanh" if self.kind == "gelu_tanh" else "none")
        return self.down(h)


class MoE(nn.Module):
    """Mixture of SwiGLU experts, top-k routing by a linear router (Mixtral, Jamba).

    The routing weights are the softmax over all experts of the chosen ones, renormalised over
    the top k where ``renormalise`` (Mixtral; Jamba keeps the plain softmax weights). Eagerly, tokens go to
    their experts by index (each expert reads only its tokens). While a CUDA graph is being
    captured, shapes must not depend on data, so then: with fewer (token, slot) pairs than
    experts, each pair gathers its expert's weights (a decode step at small batch reads only the
    chosen experts, as a sparse kernel would); otherwise every expert runs on every token,
    weighted by the routing (zero for experts not chosen). All paths compute the same function.
    """

    def __init__(self, dim: int, d_ff: int, n_experts: int, top_k: int, renormalise: bool = True):
        super().__init__()
        self.n_experts, self.top_k, self.renormalise = n_experts, top_k, renormalise
        self.router = nn.Linear(dim, n_experts, bias=False)
        self.gate_up = nn.Parameter(torch.empty(n_experts, 2 * d_ff, dim))
        self.down = nn.Parameter(torch.empty(n_experts, dim, d_ff))
        for w in (self.gate_up, self.down):
            nn.init.normal_(w, std=w.shape[-1] ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        probs = torch.softmax(self.router(x).float(), dim=-1)
        weight, chosen = probs.topk(self.top_k, dim=-1)  # (t, k)
        if self.renormalise:
            weight = weight / weight.sum(-1, keepdim=True)
        weight = weight.to(x.dtype)
        if not (x.is_cuda and torch.cuda.is_current_stream_capturing()):
            out = self._by_index(x, weight, chosen)
        elif chosen.numel() < self.n_experts:
            out = self._gathered(x, weight, chosen)
        else:
            out = self._dense(x, weight, chosen)
        return out.reshape(shape)

    @staticmethod
    def _swiglu(h: torch.Tensor) -> torch.Tensor:
        gate, up = h.chunk(2, dim=-1)
        return F.silu(gate) * up

    def _by_index(self, x, weight, chosen):
        out = torch.zeros_like(x)
        for e in range(self.n_experts):
            token, slot = torch.where(chosen == e)
            if token.numel() == 0:
                continue
            h = self._swiglu(x[token] @ self.gate_up[e].T) @ self.down[e].T
            out.index_add_(0, token, h * weight[token, slot, None])
        return out

    def _gathered(self, x, weight, chosen):
        t, k = chosen.shape
        idx = chosen.reshape(-1)
        xs = x.repeat_interleave(k, dim=0)[:, :, None]  # (t k, d, 1)
        h = self._swiglu(torch.bmm(self.gate_up[idx], xs)[..., 0])
        y = torch.bmm(self.down[idx], h[:, :, None])[..., 0].view(t, k, -1)
        return (y * weight[..., None]).sum(1)

    def _dense(self, x, weight, chosen):
        full = torch.zeros(x.shape[0], self.n_experts, dtype=x.dtype, device=x.device)
        full.scatter_(1, chosen, weight)
        h = self._swiglu(torch.einsum("td,efd->tef", x, self.gate_up))
        y = torch.einsum("tef,edf->ted", h, self.down)
        return torch.einsum("ted,te->td", y, full)


def rotary_tables(rotary_dim: int, max_len: int, theta: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (max_len, rotary_dim / 2) in float32 for GPT-NeoX / Llama rotary embeddings."""
    inv = 1.0 / theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64, device=device) / rotary_dim)
    angles = torch.arange(max_len, dtype=torch.float64, device=device)[:, None] * inv
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first 2 * cos.shape[-1] channels of x (b, l, h, d) in halves (GPT-NeoX style);
    cos, sin: (l, r / 2)."""
    r = 2 * cos.shape[-1]
    rot, keep = x[..., :r].float(), x[..., r:]
    x1, x2 = rot.chunk(2, dim=-1)
    c, s = cos[None, :, None], sin[None, :, None]
    rotated = torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)
    return torch.cat([rotated, keep], dim=-1) if keep.shape[-1] else rotated


class Attention(nn.Module):
    """Causal multi-head attention with grouped-query heads (n_kv_heads divides n_heads) and
    optional rotary embeddings on the first ``rotary_dim`` channels of each head (0: none, as in
    Jamba's attention layers). Keys and values of a cached sequence live in a static cache
    (b, max_len, n_kv_heads, head_dim)."""

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int, head_dim: int, rotary_dim: int = 0,
                 rope_theta: float = 10000.0, bias: bool = False):
        super().__init__()
        if n_heads % n_kv_heads:
            raise ValueError(f"n_heads={n_heads} must be a multiple of n_kv_heads={n_kv_heads}")
        if rotary_dim % 2 or rotary_dim > head_dim:
            raise ValueError(f"rotary_dim={rotary_dim} must be even and at most head_dim={head_dim}")
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.rotary_dim, self.rope_theta = rotary_dim, rope_theta
        self.qkv = nn.Linear(dim, (n_heads + 2 * n_kv_heads) * head_dim, bias=bias)
        self.out = nn.Linear(n_heads * head_dim, dim, bias=bias)
        self._tables: tuple[torch.Tensor, torch.Tensor] | None = None

    def prepare(self, max_len: int, device) -> None:
        """Have rotary tables for positions below ``max_len``. A CUDA graph must capture tables
        that already exist, so the generator calls this for the whole cache before capturing."""
        if not self.rotary_dim:
            return
        have = self._tables[0].shape[0] if self._tables is not None else 0
        if have < max_len or self._tables[0].device != torch.device(device):
            # At least doubled, so a growing sequence rebuilds them O(log L) times.
            self._tables = rotary_tables(self.rotary_dim, max(max_len, 2 * have), self.rope_theta, device)

    def _rotate(self, q, k, pos: int):
        if not self.rotary_dim:
            return q, k
        end = pos + q.shape[1]
        self.prepare(end, q.device)
        cos, sin = (t[pos:end] for t in self._tables)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)

    def forward(self, x: torch.Tensor, ops: OpBackends, state=None, pos: int = 0) -> torch.Tensor:
        """x (b, l, dim), the tokens at positions pos .. pos + l - 1. With ``state`` (a
        :class:`~.cache.KVCache` holding the first ``pos`` tokens) their keys and values are
        appended and the queries attend to everything cached (bottom-right causal)."""
        b, l, _ = x.shape
        q, k, v = self.qkv(x).view(b, l, -1, self.head_dim).split(
            [self.n_heads, self.n_kv_heads, self.n_kv_heads], dim=2)
        q, k = self._rotate(q, k, pos)
        if state is not None:
            k, v = state.update(k, v)
        y = api.attention(q, k, v, causal=True, backend=ops.attention)
        return self.out(y.reshape(b, l, -1))

    def step(self, x: torch.Tensor, ops: OpBackends, state, pos: int) -> torch.Tensor:
        """x (b, dim): the token at position ``pos``; one query over the cache (bottom-right causal)."""
        return self.forward(x[:, None], ops, state, pos)[:, 0]


def inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    return y + torch.log(-torch.expm1(-y))


def _dt_bias(n: int, dt_min=1e-3, dt_max=1e-1) -> torch.Tensor:
    """Mamba's initialisation: softplus(bias) log-uniform in [dt_min, dt_max]."""
    dt = torch.exp(torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    return inverse_softplus(dt.clamp(min=1e-4))


class MambaMixer(nn.Module):
    """Mamba-1 selective SSM block ([M1] Fig. 3): in_proj to x and z, depthwise causal conv + silu
    on x, x_proj to (dt, B, C), dt_proj to d_inner, selective scan with D skip and silu(z) gate,
    out_proj. ``inner_norms`` adds Jamba's RMSNorms on dt, B and C (epsilon ``eps``, the model's)."""

    def __init__(self, dim: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | None = None, conv_bias: bool = True, bias: bool = False,
                 inner_norms: bool = False, eps: float = 1e-6):
        super().__init__()
        self.d_inner, self.d_state, self.d_conv = expand * dim, d_state, d_conv
        self.dt_rank = dt_rank or math.ceil(dim / 16)
        di = self.d_inner
        self.in_proj = nn.Linear(dim, 2 * di, bias=bias)
        self.conv_weight = nn.Parameter(torch.randn(di, d_conv) * d_conv ** -0.5)
        self.conv_bias = nn.Parameter(torch.randn(di) * 0.1) if conv_bias else None
        self.x_proj = nn.Linear(di, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, di, bias=False)
        self.dt_bias = nn.Parameter(_dt_bias(di))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(di, 1))
        self.D = nn.Parameter(torch.ones(di))
        self.out_proj = nn.Linear(di, dim, bias=bias)
        self.inner_norms = nn.ModuleList([RMSNorm(n, eps) for n in (self.dt_rank, d_state, d_state)]) \
            if inner_norms else None

    def _dt_b_c(self, xc: torch.Tensor):
        """(dt before bias, B, C) from conv outputs xc (..., d_inner)."""
        dt, B, C = self.x_proj(xc).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        if self.inner_norms is not None:
            dt, B, C = (norm(t) for norm, t in zip(self.inner_norms, (dt, B, C)))
        return self.dt_proj(dt), B, C

    def forward(self, x: torch.Tensor, ops: OpBackends, state=None, pos: int = 0) -> torch.Tensor:
        """x (b, l, dim). With ``state`` = (conv_state (b, d_inner, s), ssm_state (b, d_inner, n)),
        both are overwritten with the states after the last token (a fresh sequence)."""
        xz = self.in_proj(x).transpose(1, 2)  # (b, 2 di, l)
        u, z = xz.chunk(2, dim=1)
        if state is not None:
            conv_state = state[0]
            s = conv_state.shape[-1]
            conv_state.copy_(F.pad(u, (max(s - u.shape[-1], 0), 0))[..., -s:])
        xc = api.causal_conv1d(u, self.conv_weight, self.conv_bias, "silu", backend=ops.causal_conv1d)
        dt, B, C = self._dt_b_c(xc.transpose(1, 2))
        A = -torch.exp(self.A_log.float())
        out = api.selective_scan(
            xc, dt.transpose(1, 2), A, B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous(),
            self.D.float(), z, self.dt_bias.float(), delta_softplus=True, return_last_state=state is not None,
            backend=ops.selective_scan)
        if state is not None:
            out, last = out
            state[1].copy_(last)
        return self.out_proj(out.transpose(1, 2))

    def step(self, x: torch.Tensor, ops: OpBackends, state, pos: int = 0) -> torch.Tensor:
        """x (b, dim): one token; updates (conv_state, ssm_state) in place."""
        conv_state, ssm_state = state
        u, z = self.in_proj(x).chunk(2, dim=-1)  # (b, di)
        xc = api.causal_conv1d_update(u, conv_state, self.conv_weight, self.conv_bias, "silu",
                                      backend=ops.causal_conv1d_update)
        dt, B, C = self._dt_b_c(xc)
        A = -torch.exp(self.A_log.float())
        y = api.selective_state_update(ssm_state, xc, dt, A, B, C, self.D.float(), z, self.dt_bias.float(),
                                       dt_softplus=True, backend=ops.selective_state_update)
        return self.out_proj(y)


class Mamba2Mixer(nn.Module):
    """Mamba-2 block ([M2] Fig. 6): one in_proj to (z, x, B, C, dt), depthwise causal conv + silu
    over (x, B, C), SSD with one scalar decay per head, D skip, gated RMSNorm (per group) with
    silu(z) (epsilon ``eps``, the model's), out_proj."""

    def __init__(self, dim: int, d_state: int = 128, d_conv: int = 4, expand: int = 2, headdim: int = 64,
                 ngroups: int = 1, chunk_size: int = 256, conv_bias: bool = True, bias: bool = False,
                 eps: float = 1e-5):
        super().__init__()
        self.d_inner = expand * dim
        if self.d_inner % headdim:
            raise ValueError(f"d_inner={self.d_inner} must be a multiple of headdim={headdim}")
        self.nheads, self.headdim, self.ngroups = self.d_inner // headdim, headdim, ngroups
        self.d_state, self.d_conv, self.chunk_size = d_state, d_conv, chunk_size
        self.conv_dim = self.d_inner + 2 * ngroups * d_state
        self.in_proj = nn.Linear(dim, self.d_inner + self.conv_dim + self.nheads, bias=bias)
        self.conv_weight = nn.Parameter(torch.randn(self.conv_dim, d_conv) * d_conv ** -0.5)
        self.conv_bias = nn.Parameter(torch.randn(self.conv_dim) * 0.1) if conv_bias else None
        self.dt_bias = nn.Parameter(_dt_bias(self.nheads))
        self.A_log = nn.Parameter(torch.log(torch.rand(self.nheads) * 15 + 1))
        self.D = nn.Parameter(torch.ones(self.nheads))
        self.norm = RMSNorm(self.d_inner, eps, group_size=self.d_inner // ngroups)
        self.out_proj = nn.Linear(self.d_inner, dim, bias=bias)

    def _split(self, zxbcdt: torch.Tensor):
        return zxbcdt.split([self.d_inner, self.conv_dim, self.nheads], dim=-1)

    def _x_b_c(self, xbc: torch.Tensor):
        gn = self.ngroups * self.d_state
        x, B, C = xbc.split([self.d_inner, gn, gn], dim=-1)
        lead = x.shape[:-1]
        return (x.reshape(*lead, self.nheads, self.headdim), B.reshape(*lead, self.ngroups, self.d_state),
                C.reshape(*lead, self.ngroups, self.d_state))

    def forward(self, x: torch.Tensor, ops: OpBackends, state=None, pos: int = 0) -> torch.Tensor:
        """x (b, l, dim). With ``state`` = (conv_state (b, conv_dim, s), ssm_state (b, h, p, n)),
        both are overwritten with the states after the last token (a fresh sequence)."""
        z, xbc, dt = self._split(self.in_proj(x))
        xbc = xbc.transpose(1, 2)  # (b, conv_dim, l)
        if state is not None:
            s = state[0].shape[-1]
            state[0].copy_(F.pad(xbc, (max(s - xbc.shape[-1], 0), 0))[..., -s:])
        xbc = api.causal_conv1d(xbc, self.conv_weight, self.conv_bias, "silu", backend=ops.causal_conv1d)
        xs, B, C = self._x_b_c(xbc.transpose(1, 2))
        A = -torch.exp(self.A_log.float())
        y = api.ssd(xs, dt, A, B, C, chunk_size=self.chunk_size, D=self.D.float(), dt_bias=self.dt_bias.float(),
                    dt_softplus=True, return_final_states=state is not None, backend=ops.ssd)
        if state is not None:
            y, last = y
            state[1].copy_(last)
        y = self.norm(y.flatten(-2), gate=z)
        return self.out_proj(y)

    def step(self, x: torch.Tensor, ops: OpBackends, state, pos: int = 0) -> torch.Tensor:
        """x (b, dim): one token; updates (conv_state, ssm_state) in place."""
        conv_state, ssm_state = state
        z, xbc, dt = self._split(self.in_proj(x))
        xbc = api.causal_conv1d_update(xbc, conv_state, self.conv_weight, self.conv_bias, "silu",
                                       backend=ops.causal_conv1d_update)
        xs, B, C = self._x_b_c(xbc)
        p, n = self.headdim, self.d_state
        # The step op's Mamba-2 layout carries dt, A, D and dt_bias per channel: broadcast views.
        A = (-torch.exp(self.A_log.float()))[:, None, None].expand(self.nheads, p, n)
        y = api.selective_state_update(
            ssm_state, xs, dt[..., None].expand(-1, -1, p), A, B, C,
            self.D.float()[:, None].expand(-1, p), None, self.dt_bias.float()[:, None].expand(-1, p),
            dt_softplus=True, backend=ops.selective_state_update)
        y = self.norm(y.flatten(-2), gate=z)
        return self.out_proj(y)
