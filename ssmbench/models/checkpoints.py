"""Hugging Face checkpoints loaded into our models, and their tokenizers.

:func:`from_pretrained` reads a checkpoint folder (or a hub id, through huggingface_hub's cache):
the config with transformers' ``AutoConfig`` (the original ``state-spaces/mamba-*`` layout, which
transformers does not read, from its ``config.json``), the weights with safetensors (or
``torch.load(weights_only=True)`` where a checkpoint has only ``pytorch_model.bin``).

Each supported architecture is one :class:`Architecture`: which config attribute gives each
:class:`ModelConfig` field, which values the architecture implies, which config values it must
have for our layers to compute its function, and how its weight names map onto ours. Every weight
of our model must come from the checkpoint and every tensor of the checkpoint must be used (or be a
buffer the model recomputes): anything else is an error that names it, so no weight is left random.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Mapping

import torch

from ..impls.base import parse_dtype
from .configs import MambaMixer, ModelConfig
from .lm import LanguageModel

_MISSING = object()


class CheckpointError(ValueError):
    """A checkpoint that cannot become one of our models, and why."""


def _get(config, path: str, default=_MISSING):
    """``config``'s value at ``path``: attribute or key names joined by dots."""
    value = config
    for part in path.split("."):
        value = value.get(part, _MISSING) if isinstance(value, Mapping) else getattr(value, part, _MISSING)
        if value is _MISSING:
            if default is _MISSING:
                raise CheckpointError(f"the checkpoint's config has no {path!r}")
            return default
    return value


def _rope(key: str, *older: str, default):
    """A rotary setting: in ``rope_parameters`` (transformers 5), else a top-level attribute of
    the same or an ``older`` name (transformers 4)."""
    def value(c):
        for path in (f"rope_parameters.{key}", key, *older):
            found = _get(c, path, _MISSING)
            if found is not _MISSING:
                return found
        return default
    return value


@dataclass(frozen=True)
class OneOf:
    """A required config value with more than one accepted spelling (absent: None)."""

    values: tuple

    def __init__(self, *values):
        object.__setattr__(self, "values", values)

    def __repr__(self) -> str:
        return " or ".join(map(repr, self.values))


def _head_dim(heads: str, width: str):
    return lambda c: getattr(c, "head_dim", None) or _get(c, width) // _get(c, heads)


@dataclass(frozen=True)
class Rule:
    """Our weight(s) matching ``ours`` (``{i}``: a layer, ``{p}``: weight or bias) from the
    checkpoint's ``sources`` (the same placeholders; ``{e}``: each expert, stacked), combined by
    ``combine`` (default: the one source as it is)."""

    ours: str
    sources: tuple[str, ...]
    combine: Callable[[list[torch.Tensor], ModelConfig], torch.Tensor] | None = None

    @cached_property
    def regex(self) -> re.Pattern:
        pattern = re.escape(self.ours).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
        return re.compile(pattern)


def _cat(tensors, config):
    return torch.cat(tensors, dim=0)


def _conv(tensors, config):
    """A depthwise Conv1d weight (channels, 1, width) as our (channels, width)."""
    return tensors[0][:, 0]


def _transposed(tensors, config):
    """GPT-2's Conv1D stores (in, out); a Linear, (out, in)."""
    return tensors[0].t().contiguous()


def _neox_qkv(tensors, config):
    """GPT-NeoX interleaves q, k and v per head (heads, 3, head_dim); ours are (3, heads, head_dim)."""
    w = tensors[0]
    return w.reshape(config.n_heads, 3, config.head_dim, *w.shape[1:]).transpose(0, 1).reshape(w.shape)


def _experts(per_expert: int):
    """Each expert's ``per_expert`` sources concatenated, the experts stacked."""
    def combine(tensors, config):
        groups = [tensors[e * per_expert:(e + 1) * per_expert] for e in range(config.n_experts)]
        return torch.stack([torch.cat(g, dim=0) for g in groups])
    return combine


def _attention_rules(src: str) -> tuple[Rule, ...]:
    return (Rule("layers.{i}.mixer.qkv.{p}", tuple(f"{src}{x}_proj.{{p}}" for x in "qkv"), _cat),
            Rule("layers.{i}.mixer.out.{p}", (f"{src}o_proj.{{p}}",)))


def _swiglu_rules(src: str, gate: str, up: str, down: str) -> tuple[Rule, ...]:
    return (Rule("layers.{i}.mlp.up.{p}", (f"{src}{gate}.{{p}}", f"{src}{up}.{{p}}"), _cat),
            Rule("layers.{i}.mlp.down.{p}", (f"{src}{down}.{{p}}",)))


def _moe_rules(src: str, router: str, gate: str, up: str, down: str) -> tuple[Rule, ...]:
    return (Rule("layers.{i}.mlp.router.weight", (f"{src}{router}.weight",)),
            Rule("layers.{i}.mlp.gate_up", (f"{src}experts.{{e}}.{gate}.weight", f"{src}experts.{{e}}.{up}.weight"),
                 _experts(2)),
            Rule("layers.{i}.mlp.down", (f"{src}experts.{{e}}.{down}.weight",), _experts(1)))


# Our Mamba mixers' names -> the checkpoints' (mamba-ssm's, which transformers keeps).
_MAMBA_NAMES = {"in_proj.{p}": "in_proj.{p}", "x_proj.weight": "x_proj.weight", "dt_proj.weight": "dt_proj.weight",
                "dt_bias": "dt_proj.bias", "A_log": "A_log", "D": "D", "out_proj.{p}": "out_proj.{p}",
                "conv_bias": "conv1d.bias", "inner_norms.0.weight": "dt_layernorm.weight",
                "inner_norms.1.weight": "b_layernorm.weight", "inner_norms.2.weight": "c_layernorm.weight"}
_MAMBA2_NAMES = {"in_proj.{p}": "in_proj.{p}", "dt_bias": "dt_bias", "A_log": "A_log", "D": "D",
                 "norm.weight": "norm.weight", "out_proj.{p}": "out_proj.{p}", "conv_bias": "conv1d.bias"}


def _mamba_rules(src: str, names: Mapping[str, str]) -> tuple[Rule, ...]:
    return (Rule("layers.{i}.mixer.conv_weight", (f"{src}conv1d.weight",), _conv),
            *(Rule(f"layers.{{i}}.mixer.{ours}", (src + theirs,)) for ours, theirs in names.items()))


def _block_rules(layer: str, norm: str, mlp_norm: str | None = None) -> tuple[Rule, ...]:
    rules = (Rule("layers.{i}.norm.{p}", (f"{layer}{norm}.{{p}}",)),)
    return rules + ((Rule("layers.{i}.mlp_norm.{p}", (f"{layer}{mlp_norm}.{{p}}",)),) if mlp_norm else ())


def _ends(embed: str, final_norm: str, head: str = "lm_head.weight", positions: str | None = None):
    rules = (Rule("embed.weight", (embed,)), Rule("norm.{p}", (final_norm + ".{p}",)), Rule("head.weight", (head,)))
    return rules + ((Rule("positions.weight", (positions,)),) if positions else ())


@dataclass(frozen=True)
class Architecture:
    """One checkpoint architecture: ``fields`` maps a ModelConfig field ("mamba.x": a field of its
    MambaMixer) to the config attribute path that gives it, or a function of the config;
    ``fixed``: the values the architecture implies; ``requires``: config values (or functions of
    the config giving the expected value) our layers need to compute its function; ``weights``:
    the name rules; ``prefix``: the base model's name, which some checkpoints leave off;
    ``buffers``: regexes of entries that are not weights (causal masks, rotary frequencies)."""

    name: str
    fields: Mapping[str, str | Callable]
    weights: tuple[Rule, ...]
    fixed: Mapping[str, Any] = field(default_factory=dict)
    requires: Mapping[str, Any] = field(default_factory=dict)
    prefix: str = ""
    buffers: tuple[str, ...] = ()

    def model_config(self, hf, name: str, source: str) -> ModelConfig:
        for path, expected in self.requires.items():
            want = expected(hf) if callable(expected) else expected
            have = _get(hf, path, None)
            if not (have in want.values if isinstance(want, OneOf) else have == want):
                raise CheckpointError(f"{name} ({self.name}): config {path}={have!r} is not supported; "
                                      f"our layers compute the function of {path}={want!r}")
        values = {**self.fixed}
        for ours, theirs in self.fields.items():
            values[ours] = theirs(hf) if callable(theirs) else _get(hf, theirs)
        mamba = {k.split(".", 1)[1]: values.pop(k) for k in list(values) if k.startswith("mamba.")}
        if mamba:
            values["mamba"] = MambaMixer(**mamba)
        return ModelConfig(name=name, source=source, **values)


_LLAMA_FIELDS = {
    "n_layers": "num_hidden_layers", "d_model": "hidden_size", "vocab_size": "vocab_size",
    "n_heads": "num_attention_heads", "n_kv_heads": "num_key_value_heads",
    "head_dim": _head_dim("num_attention_heads", "hidden_size"), "d_ff": "intermediate_size",
    "norm_eps": "rms_norm_eps", "rope_theta": _rope("rope_theta", default=10000.0),
    "tie_embeddings": "tie_word_embeddings"}
# Rotary scaling (Llama 3, YaRN, ...) is not modelled: only the plain rotary embedding.
_DEFAULT_ROPE = {path: OneOf("default", None) for path in
                 ("rope_parameters.rope_type", "rope_scaling.rope_type", "rope_scaling.type")}
_LLAMA_REQUIRES = {"hidden_act": "silu", **_DEFAULT_ROPE}
_LLAMA_LAYER = "model.layers.{i}."
_LLAMA_WEIGHTS = (*_ends("model.embed_tokens.weight", "model.norm"),
                  *_block_rules(_LLAMA_LAYER, "input_layernorm", "post_attention_layernorm"),
                  *_attention_rules(_LLAMA_LAYER + "self_attn."))
_ROTARY_BUFFERS = (r".*\.rotary_emb\.inv_freq",)
_MAMBA_FIELDS = {
    "n_layers": "num_hidden_layers", "d_model": "hidden_size", "vocab_size": "vocab_size",
    "norm_eps": "layer_norm_epsilon", "tie_embeddings": "tie_word_embeddings", "mamba.d_state": "state_size",
    "mamba.d_conv": "conv_kernel", "mamba.expand": "expand", "mamba.conv_bias": "use_conv_bias",
    "mamba.proj_bias": "use_bias"}
# The original mamba-ssm layout (MambaLMHeadModel's config.json), with mamba-ssm's defaults.
_SSM_DEFAULTS = {"ssm_cfg": {}, "rms_norm": True, "norm_epsilon": 1e-5, "tie_embeddings": True,
                 "pad_vocab_size_multiple": 1, "d_intermediate": 0, "attn_layer_idx": []}
_SSM_FIELDS = {
    "n_layers": "n_layer", "d_model": "d_model", "norm_eps": "norm_epsilon", "tie_embeddings": "tie_embeddings",
    "vocab_size": lambda c: math.ceil(c.vocab_size / c.pad_vocab_size_multiple) * c.pad_vocab_size_multiple}
_SSM_REQUIRES = {"rms_norm": True, "d_intermediate": 0, "attn_layer_idx": []}


def _ssm(key: str, default):
    return lambda c: _get(c, f"ssm_cfg.{key}", default)


def _ssm_dt_rank(c):
    rank = _get(c, "ssm_cfg.dt_rank", "auto")
    return 0 if rank == "auto" else rank  # 0: our spelling of mamba-ssm's "auto"


ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (
    Architecture(
        "MambaForCausalLM", {**_MAMBA_FIELDS, "mamba.dt_rank": "time_step_rank"},
        (*_ends("backbone.embeddings.weight", "backbone.norm_f"), *_block_rules("backbone.layers.{i}.", "norm"),
         *_mamba_rules("backbone.layers.{i}.mixer.", _MAMBA_NAMES)),
        fixed={"attn_layer_period": 0}, prefix="backbone.",
        requires={"hidden_act": "silu", "intermediate_size": lambda c: c.expand * c.hidden_size}),
    Architecture(
        "Mamba2ForCausalLM", {**_MAMBA_FIELDS, "mamba.headdim": "head_dim", "mamba.ngroups": "n_groups",
                              "mamba.chunk_size": "chunk_size"},
        (*_ends("backbone.embeddings.weight", "backbone.norm_f"), *_block_rules("backbone.layers.{i}.", "norm"),
         *_mamba_rules("backbone.layers.{i}.mixer.", _MAMBA2_NAMES)),
        fixed={"attn_layer_period": 0, "mamba.version": 2}, prefix="backbone.",
        requires={"hidden_act": "silu", "num_heads": lambda c: c.expand * c.hidden_size // c.head_dim,
                  "time_step_limit": OneOf((0.0, math.inf), [0.0, math.inf])}),
    Architecture(
        "mamba_ssm:Mamba1",
        {**_SSM_FIELDS, **{f"mamba.{k}": _ssm(k, d) for k, d in
                           (("d_state", 16), ("d_conv", 4), ("expand", 2), ("conv_bias", True))},
         "mamba.dt_rank": _ssm_dt_rank, "mamba.proj_bias": _ssm("bias", False)},
        (*_ends("backbone.embedding.weight", "backbone.norm_f"), *_block_rules("backbone.layers.{i}.", "norm"),
         *_mamba_rules("backbone.layers.{i}.mixer.", _MAMBA_NAMES)),
        fixed={"attn_layer_period": 0}, requires=_SSM_REQUIRES, prefix="backbone."),
    Architecture(
        "mamba_ssm:Mamba2",
        {**_SSM_FIELDS, **{f"mamba.{k}": _ssm(theirs, d) for k, theirs, d in
                           (("d_state", "d_state", 128), ("d_conv", "d_conv", 4), ("expand", "expand", 2),
                            ("headdim", "headdim", 64), ("ngroups", "ngroups", 1),
                            ("chunk_size", "chunk_size", 256), ("conv_bias", "conv_bias", True),
                            ("proj_bias", "bias", False))}},
        (*_ends("backbone.embedding.weight", "backbone.norm_f"), *_block_rules("backbone.layers.{i}.", "norm"),
         *_mamba_rules("backbone.layers.{i}.mixer.", _MAMBA2_NAMES)),
        fixed={"attn_layer_period": 0, "mamba.version": 2}, prefix="backbone.",
        requires={**_SSM_REQUIRES, "ssm_cfg.rmsnorm": OneOf(True, None),
                  "ssm_cfg.norm_before_gate": OneOf(False, None), "ssm_cfg.d_ssm": OneOf(None)}),
    Architecture(
        "JambaForCausalLM",
        {"n_layers": "num_hidden_layers", "d_model": "hidden_size", "vocab_size": "vocab_size",
         "n_heads": "num_attention_heads", "n_kv_heads": "num_key_value_heads",
         "head_dim": lambda c: c.hidden_size // c.num_attention_heads, "attn_layer_period": "attn_layer_period",
         "attn_layer_offset": "attn_layer_offset", "d_ff": "intermediate_size", "n_experts": "num_experts",
         "experts_per_token": "num_experts_per_tok", "expert_layer_period": "expert_layer_period",
         "expert_layer_offset": "expert_layer_offset", "norm_eps": "rms_norm_eps",
         "tie_embeddings": "tie_word_embeddings", "mamba.d_state": "mamba_d_state", "mamba.d_conv": "mamba_d_conv",
         "mamba.expand": "mamba_expand", "mamba.dt_rank": "mamba_dt_rank", "mamba.conv_bias": "mamba_conv_bias",
         "mamba.proj_bias": "mamba_proj_bias"},
        (*_ends("model.embed_tokens.weight", "model.final_layernorm"),
         *_block_rules("model.layers.{i}.", "input_layernorm", "pre_ff_layernorm"),
         *_attention_rules("model.layers.{i}.self_attn."),
         *_mamba_rules("model.layers.{i}.mamba.", _MAMBA_NAMES),
         *_moe_rules("model.layers.{i}.feed_forward.", "router", "gate_proj", "up_proj", "down_proj"),
         *_swiglu_rules("model.layers.{i}.feed_forward.", "gate_proj", "up_proj", "down_proj")),
        fixed={"mamba.inner_norms": True, "router_renormalise": False}, prefix="model.",
        requires={"hidden_act": "silu"}),
    Architecture(
        "LlamaForCausalLM", {**_LLAMA_FIELDS, "bias": "attention_bias"},
        (*_LLAMA_WEIGHTS, *_swiglu_rules(_LLAMA_LAYER + "mlp.", "gate_proj", "up_proj", "down_proj")),
        requires={**_LLAMA_REQUIRES, "mlp_bias": lambda c: c.attention_bias}, prefix="model.",
        buffers=_ROTARY_BUFFERS),
    Architecture(
        "MistralForCausalLM", {**_LLAMA_FIELDS, "sliding_window": lambda c: c.sliding_window or 0},
        (*_LLAMA_WEIGHTS, *_swiglu_rules(_LLAMA_LAYER + "mlp.", "gate_proj", "up_proj", "down_proj")),
        requires=_LLAMA_REQUIRES, prefix="model.", buffers=_ROTARY_BUFFERS),
    Architecture(
        "MixtralForCausalLM",
        {**_LLAMA_FIELDS, "sliding_window": lambda c: c.sliding_window or 0, "n_experts": "num_local_experts",
         "experts_per_token": "num_experts_per_tok"},
        (*_LLAMA_WEIGHTS, *_moe_rules(_LLAMA_LAYER + "block_sparse_moe.", "gate", "w1", "w3", "w2")),
        fixed={"router_renormalise": True}, requires=_LLAMA_REQUIRES, prefix="model.", buffers=_ROTARY_BUFFERS),
    Architecture(
        "GPTNeoXForCausalLM",
        {"n_layers": "num_hidden_layers", "d_model": "hidden_size", "vocab_size": "vocab_size",
         "n_heads": "num_attention_heads", "n_kv_heads": "num_attention_heads",
         "head_dim": lambda c: c.hidden_size // c.num_attention_heads, "d_ff": "intermediate_size",
         "norm_eps": "layer_norm_eps", "rope_theta": _rope("rope_theta", "rotary_emb_base", default=10000.0),
         "rotary_fraction": _rope("partial_rotary_factor", "rotary_pct", default=1.0),
         "parallel_residual": "use_parallel_residual",
         "tie_embeddings": "tie_word_embeddings"},
        (*_ends("gpt_neox.embed_in.weight", "gpt_neox.final_layer_norm", head="embed_out.weight"),
         *_block_rules("gpt_neox.layers.{i}.", "input_layernorm", "post_attention_layernorm"),
         Rule("layers.{i}.mixer.qkv.{p}", ("gpt_neox.layers.{i}.attention.query_key_value.{p}",), _neox_qkv),
         Rule("layers.{i}.mixer.out.{p}", ("gpt_neox.layers.{i}.attention.dense.{p}",)),
         Rule("layers.{i}.mlp.up.{p}", ("gpt_neox.layers.{i}.mlp.dense_h_to_4h.{p}",)),
         Rule("layers.{i}.mlp.down.{p}", ("gpt_neox.layers.{i}.mlp.dense_4h_to_h.{p}",))),
        fixed={"mlp": "gelu", "norm": "layernorm", "bias": True}, prefix="gpt_neox.",
        requires={"hidden_act": "gelu", "attention_bias": OneOf(True, None), **_DEFAULT_ROPE},
        buffers=(r"gpt_neox\.layers\.\d+\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)",)),
    Architecture(
        "GPT2LMHeadModel",
        {"n_layers": "n_layer", "d_model": "n_embd", "vocab_size": "vocab_size", "n_heads": "n_head",
         "n_kv_heads": "n_head", "head_dim": lambda c: c.n_embd // c.n_head,
         "d_ff": lambda c: c.n_inner or 4 * c.n_embd,
         "norm_eps": "layer_norm_epsilon", "learned_positions": "n_positions", "tie_embeddings": "tie_word_embeddings"},
        (*_ends("transformer.wte.weight", "transformer.ln_f", positions="transformer.wpe.weight"),
         *_block_rules("transformer.h.{i}.", "ln_1", "ln_2"),
         *(Rule(f"layers.{{i}}.{ours}.weight", (f"transformer.h.{{i}}.{theirs}.weight",), _transposed)
           for ours, theirs in (("mixer.qkv", "attn.c_attn"), ("mixer.out", "attn.c_proj"),
                                ("mlp.up", "mlp.c_fc"), ("mlp.down", "mlp.c_proj"))),
         *(Rule(f"layers.{{i}}.{ours}.bias", (f"transformer.h.{{i}}.{theirs}.bias",))
           for ours, theirs in (("mixer.qkv", "attn.c_attn"), ("mixer.out", "attn.c_proj"),
                                ("mlp.up", "mlp.c_fc"), ("mlp.down", "mlp.c_proj")))),
        fixed={"mlp": "gelu_tanh", "norm": "layernorm", "bias": True}, prefix="transformer.",
        requires={"activation_function": "gelu_new", "scale_attn_weights": True,
                  "scale_attn_by_inverse_layer_idx": False, "add_cross_attention": False},
        buffers=(r"transformer\.h\.\d+\.attn\.(bias|masked_bias)",)),
)}
# transformers names GPT-2's causal LM GPT2LMHeadModel; the name a user may reach for is an alias.
ARCHITECTURES["GPT2ForCausalLM"] = ARCHITECTURES["GPT2LMHeadModel"]


# Checkpoint files, in the order a folder is searched; an index lists the shards.
_WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                 "pytorch_model.bin")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")


_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")


class _Files:
    """A checkpoint's files: a local folder, or a hub repository through huggingface_hub's
    cache (downloading what is missing unless offline)."""

    def __init__(self, path_or_id: str | os.PathLike):
        self.spec = str(path_or_id)
        self.folder = Path(path_or_id) if Path(path_or_id).is_dir() else None
        if self.folder is None and (Path(self.spec).exists() or not _HUB_ID.fullmatch(self.spec)
                                    or self.spec.startswith(".")):
            raise CheckpointError(f"path_or_id: no checkpoint folder {self.spec!r} (nor is it a hub id, owner/name)")

    @property
    def name(self) -> str:
        return self.folder.resolve().name if self.folder is not None else self.spec

    def get(self, filename: str, required: bool = True) -> Path | None:
        if self.folder is not None:
            path = self.folder / filename
            if path.is_file():
                return path
            if required:
                raise CheckpointError(f"{self.spec}: no {filename} in the checkpoint folder")
            return None
        import huggingface_hub
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

        try:
            return Path(huggingface_hub.hf_hub_download(self.spec, filename))
        except LocalEntryNotFoundError:  # before EntryNotFoundError, its base class
            if not required:
                return None
            raise CheckpointError(
                f"{self.spec}: {filename} is not in the Hugging Face cache and the hub cannot be reached "
                "(offline); download it where the hub is reachable, or pass a local folder") from None
        except EntryNotFoundError:
            if required:
                raise CheckpointError(f"{self.spec}: the hub repository has no {filename}") from None
            return None
        except RepositoryNotFoundError:
            raise CheckpointError(f"{self.spec}: no such repository on the hub (or it is private)") from None


class _Weights:
    """name -> tensor over a checkpoint's weight files (sharded or not), read on demand."""

    def __init__(self, files: _Files):
        self._where: dict[str, tuple[Path, str]] = {}  # name -> (file, name stored in it)
        self._open: dict[Path, Any] = {}
        for filename in _WEIGHT_FILES:
            path = files.get(filename, required=False)
            if path is None:
                continue
            if filename.endswith(".index.json"):
                shards = json.loads(path.read_text())["weight_map"]
                for shard in sorted(set(shards.values())):
                    shard_path = files.get(shard)
                    self._where.update({name: (shard_path, name) for name, s in shards.items() if s == shard})
            else:
                self._where.update({name: (path, name) for name in self._handle(path).keys()})
            return
        where = "in the checkpoint folder" if files.folder is not None else "on the hub or in its cache"
        raise CheckpointError(f"{files.spec}: no weights {where} (none of {', '.join(_WEIGHT_FILES)})")

    def _handle(self, path: Path):
        if path not in self._open:
            if path.suffix == ".safetensors":
                from safetensors import safe_open

                self._open[path] = safe_open(str(path), framework="pt")
            else:
                self._open[path] = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return self._open[path]

    @property
    def names(self) -> set[str]:
        return set(self._where)

    def rename(self, mapping: Mapping[str, str]) -> None:
        self._where = {mapping.get(name, name): where for name, where in self._where.items()}

    def __getitem__(self, name: str) -> torch.Tensor:
        path, stored = self._where[name]
        handle = self._handle(path)
        return handle.get_tensor(stored) if hasattr(handle, "get_tensor") else handle[stored]


def _hf_config(files: _Files):
    """(architecture, config object) of a checkpoint."""
    raw = json.loads(files.get("config.json").read_text())
    if "model_type" not in raw and {"d_model", "n_layer", "vocab_size"} <= set(raw):
        layer = raw.get("ssm_cfg", {}).get("layer", "Mamba1")
        return f"mamba_ssm:{layer}", SimpleNamespace(**{**_SSM_DEFAULTS, **raw})
    architectures = raw.get("architectures") or []
    if len(architectures) != 1:
        raise CheckpointError(f"{files.spec}: config.json names architectures {architectures}; expected one")
    from transformers import AutoConfig

    return architectures[0], AutoConfig.from_pretrained(str(files.get("config.json").parent))


def checkpoint_name(path_or_id: str | os.PathLike) -> str:
    """The name a checkpoint's rows carry: its folder's name, or its hub id."""
    return _Files(path_or_id).name


def source_config(path_or_id: str | os.PathLike):
    """The checkpoint's own config: transformers' config object, or (the original mamba-ssm
    layout) its config.json's fields with mamba-ssm's defaults, as attributes."""
    return _hf_config(_Files(path_or_id))[1]


def read_config(path_or_id: str | os.PathLike) -> ModelConfig:
    """The :class:`ModelConfig` of a checkpoint (its config only; no weights read)."""
    return _model_config(_Files(path_or_id))[0]


def _model_config(files: _Files) -> tuple[ModelConfig, Architecture]:
    arch_name, hf = _hf_config(files)
    arch = ARCHITECTURES.get(arch_name)
    if arch is None:
        supported = sorted(n for n in ARCHITECTURES if not n.startswith("mamba_ssm:"))
        raise CheckpointError(f"{files.spec}: architecture {arch_name!r} is not supported; supported: "
                              f"{', '.join(supported)} and the original state-spaces/mamba layout")
    return arch.model_config(hf, files.name, f"{files.spec} ({arch.name})"), arch


def _sources(arch: Architecture, key: str, config: ModelConfig) -> tuple[Rule, list[str]]:
    for rule in arch.weights:
        match = rule.regex.fullmatch(key)
        if match:
            groups = match.groupdict()
            names = []
            experts = range(config.n_experts) if any("{e}" in s for s in rule.sources) else [None]
            for e in experts:
                names += [s.format(**groups, e=e) for s in rule.sources]
            return rule, names
    raise CheckpointError(f"{arch.name}: no checkpoint name for our weight {key!r}")


def from_pretrained(path_or_id: str | os.PathLike, *, ops=None, dtype="float32", device="cpu") -> LanguageModel:
    """Our :class:`LanguageModel` with a checkpoint's weights, cast to ``dtype`` on ``device``,
    in eval mode. ``path_or_id``: a checkpoint folder or a hub id (huggingface_hub's cache)."""
    files = _Files(path_or_id)
    config, arch = _model_config(files)
    weights = _Weights(files)
    names = weights.names
    _, (head,) = _sources(arch, "head.weight", config)
    if arch.prefix and not any(n.startswith(arch.prefix) for n in names):
        # Checkpoints saved from the base model (e.g. the hub's gpt2) leave its prefix off.
        weights.rename({n: arch.prefix + n for n in names if n != head})
        names = weights.names
    with torch.device("meta"):
        model = LanguageModel(config, ops)
    target = parse_dtype(dtype)
    state, used = {}, set()
    for key, param in model.state_dict(keep_vars=True).items():
        if config.tie_embeddings and key == "head.weight":
            continue
        rule, sources = _sources(arch, key, config)
        absent = [s for s in sources if s not in names]
        if absent:
            raise CheckpointError(f"{files.spec}: missing weight {absent[0]} (for our {key})")
        tensors = [weights[s] for s in sources]
        try:
            value = rule.combine(tensors, config) if rule.combine else tensors[0]
        except RuntimeError:  # shapes that do not even combine
            value = None
        if value is None or tuple(value.shape) != tuple(param.shape):
            shapes = ", ".join(f"{s} {tuple(t.shape)}" for s, t in list(zip(sources, tensors))[:4])
            raise CheckpointError(f"{files.spec}: weights of the wrong shape: {shapes} for our {key}, "
                                  f"whose shape the config gives as {tuple(param.shape)}")
        state[key] = value.to(device=device, dtype=target)
        used.update(sources)
    if config.tie_embeddings:
        state["head.weight"] = state["embed.weight"]
    if config.tie_embeddings:
        if head in names:
            # A tied checkpoint may store the head as well; it must then be the embedding.
            if not torch.equal(weights[head], weights[_sources(arch, "embed.weight", config)[1][0]]):
                raise CheckpointError(f"{files.spec}: the config ties the embeddings but {head} differs from them")
            used.add(head)
    buffers = re.compile("|".join(arch.buffers)) if arch.buffers else None
    extra = sorted(n for n in names - used if not (buffers and buffers.fullmatch(n)))
    if extra:
        more = f" (and {len(extra) - 3} more)" if len(extra) > 3 else ""
        raise CheckpointError(f"{files.spec}: extra weight {', '.join(extra[:3])}{more} that {arch.name} "
                              "as we build it has no place for")
    model.load_state_dict(state, strict=True, assign=True)
    if config.tie_embeddings:
        model.head.weight = model.embed.weight
    return model.eval().requires_grad_(False)


def load_tokenizer(path_or_id: str | os.PathLike):
    """The checkpoint's tokenizer (transformers' ``AutoTokenizer``), or None where the checkpoint
    has no tokenizer files."""
    files = _Files(path_or_id)
    if not any(files.get(f, required=False) for f in _TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(files.folder) if files.folder is not None else files.spec)
