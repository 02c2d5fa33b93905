"""Greedy generation, timed: our models with a static cache (the decode step replayed from CUDA
graphs on a GPU), and the Hugging Face baseline with ``generate()``. Also the memory a model
needs for a batch and context (weights + cache, exact bytes) and what fits a budget.

``generation_case`` is the custom case function of the ``generation`` and ``jamba_throughput``
suites: one model, one batch size, one prompt and generation length.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import statistics
import time
import warnings
from dataclasses import dataclass
from functools import partial

import torch

from ..impls.base import parse_dtype
from ..impls.checks import element_size
from .cache import kv_cache_bytes, mamba_state_bytes
from .configs import ModelConfig, get_model
from .lm import LanguageModel, build_model, with_context
from .roofline import decode_step_work

GIB = 2**30


@dataclass(frozen=True)
class Footprint:
    """Bytes of the weights and of the inference cache (KV cache of the attention layers,
    conv + SSM states of the Mamba layers) for one batch and context; activations excluded."""

    weights: int
    kv: int
    mamba: int

    @property
    def cache(self) -> int:
        return self.kv + self.mamba

    @property
    def total(self) -> int:
        return self.weights + self.cache


def footprint(config: ModelConfig, batch: int, max_len: int, dtype="bfloat16", state_dtype=None,
              weight_bytes: int | None = None) -> Footprint:
    """Weights in ``dtype`` (or ``weight_bytes`` per weight, e.g. 1 for int8 weights), cache in
    ``dtype``, SSM states in ``state_dtype`` (default ``dtype``)."""
    e = element_size(dtype)
    return Footprint(config.param_count() * (weight_bytes or e), kv_cache_bytes(config, batch, max_len, e),
                     mamba_state_bytes(config, batch, e, element_size(state_dtype or dtype)))


def max_batch(config: ModelConfig, budget_bytes: int, max_len: int, dtype="bfloat16", state_dtype=None,
              weight_bytes: int | None = None) -> int:
    """The largest batch whose weights + cache for ``max_len`` tokens fit ``budget_bytes`` (0:
    not even one sequence)."""
    one = footprint(config, 1, max_len, dtype, state_dtype, weight_bytes)
    return max(0, (budget_bytes - one.weights) // one.cache)


def max_context(config: ModelConfig, budget_bytes: int, batch: int = 1, dtype="bfloat16",
                state_dtype=None, weight_bytes: int | None = None) -> int | None:
    """The longest context whose weights + cache for ``batch`` sequences fit ``budget_bytes``;
    None when the cache does not grow with the context (no attention layer) and the rest fits."""
    fixed = footprint(config, batch, 0, dtype, state_dtype, weight_bytes).total
    per_token = kv_cache_bytes(config, batch, 1, element_size(dtype))
    if per_token == 0:
        return None if fixed <= budget_bytes else 0
    return max(0, (budget_bytes - fixed) // per_token)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Generation:
    tokens: torch.Tensor  # (b, gen)
    prefill_s: float
    decode_s: float


class Generator:
    """Greedy generation from one model into one static cache, reused across calls.

    With ``cuda_graphs`` (default on a GPU) each decode step is captured once and replayed: a
    graph reads the token buffer and writes the next token into it, so a replay launches no
    Python. A pure SSM's step does not depend on the position, so one graph serves every step;
    a model with a KV cache (or position embeddings) has one graph per position, captured in the
    first call and sharing one memory pool. Time a call after the first.
    """

    def __init__(self, model: LanguageModel, batch: int, max_len: int, cuda_graphs: bool | None = None,
                 state_dtype=None):
        self.model, self.batch, self.max_len = model, batch, max_len
        self.device = model.device
        self.cuda_graphs = self.device.type == "cuda" if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"cuda_graphs needs the model on a CUDA device, not {self.device}")
        self.cache = model.new_cache(batch, max_len, state_dtype)
        self.token = torch.zeros(batch, dtype=torch.long, device=self.device)
        self.graphs: dict[int | None, torch.cuda.CUDAGraph] = {}
        self._pool = None

    def _eager_step(self, pos: int) -> None:
        self.token.copy_(self.model.step(self.token, self.cache, pos).argmax(-1))

    def _warm_up(self, pos: int) -> None:
        """Eager steps on a side stream before the first capture, as CUDA graphs require (lazy
        library initialisation). They scribble on the cache; the prefill that follows rewrites
        every state and the KV entries up to pos."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._eager_step(pos)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        self._pool = torch.cuda.graph_pool_handle()

    def _decode(self, pos: int) -> None:
        if not self.cuda_graphs:
            self._eager_step(pos)
            return
        key = pos if self.model.step_uses_position else None
        graph = self.graphs.get(key)
        if graph is None:
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph, pool=self._pool):
                    self._eager_step(pos)
            except RuntimeError as exc:
                # Running out of memory inside a capture surfaces as the capture's own failure;
                # the out-of-memory error is the one to record.
                if isinstance(exc.__context__, torch.cuda.OutOfMemoryError):
                    raise exc.__context__ from None
                raise
            self.graphs[key] = graph
        graph.replay()

    @torch.inference_mode()
    def generate(self, prompt: torch.Tensor, gen: int, prefill: bool = True) -> Generation:
        """Greedy continuation of ``prompt`` (b, l) by ``gen`` tokens: the first from the prefill,
        then gen - 1 decode steps. ``prefill`` False: the cache of the prompt's first l - 1 tokens
        is taken as written, not computed (its contents do not change a step's time), and the
        last prompt token runs as a decode step in the prefill's place: decode alone, at context l."""
        b, length = prompt.shape
        if b != self.batch or length + gen > self.max_len or gen < 1:
            raise ValueError(f"generate: prompt {tuple(prompt.shape)} + {gen} tokens does not fit the "
                             f"generator's batch {self.batch} and max_len {self.max_len}")
        if self.cuda_graphs and self._pool is None:
            self._warm_up(length)
        out = torch.empty(b, gen, dtype=torch.long, device=self.device)
        _sync(self.device)
        t0 = time.perf_counter()
        if prefill:
            self.token.copy_(self.model.prefill(prompt, self.cache).argmax(-1))
        else:
            self.token.copy_(prompt[:, -1])
            self._decode(length - 1)
        out[:, 0] = self.token
        _sync(self.device)
        t1 = time.perf_counter()
        for i in range(1, gen):
            self._decode(length + i - 1)
            out[:, i] = self.token
        _sync(self.device)
        return Generation(out, t1 - t0, time.perf_counter() - t1)


def hf_model(config: ModelConfig, dtype="float32", device="cpu", seed: int = 0):
    """A Hugging Face ``transformers`` causal LM of ``config``'s shape with random weights (no
    download): GPT-2 for a GPT-3-style config (learned positions, LayerNorm, GELU MLP, biases),
    Llama for a Llama-style one (RMSNorm, SwiGLU, rotary, grouped-query heads)."""
    import transformers

    if config.mamba_layers or config.n_experts > 1 or config.sliding_window or config.parallel_residual:
        raise ValueError(f"{config.name}: the Hugging Face baseline covers dense sequential Transformers only")
    activation = {"gelu": "gelu", "gelu_tanh": "gelu_new"}.get(config.mlp)
    gpt = config.learned_positions and config.norm == "layernorm" and activation
    llama = not config.learned_positions and config.norm == "rmsnorm" and config.mlp == "swiglu"
    if gpt and config.head_dim * config.n_heads == config.d_model and config.n_kv_heads == config.n_heads:
        hf_config = transformers.GPT2Config(
            vocab_size=config.vocab_size, n_positions=config.learned_positions, n_embd=config.d_model,
            n_layer=config.n_layers, n_head=config.n_heads, n_inner=config.d_ff, activation_function=activation,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=config.norm_eps,
            tie_word_embeddings=config.tie_embeddings, pad_token_id=0, bos_token_id=0, eos_token_id=None)
        cls = transformers.GPT2LMHeadModel
    elif llama and not config.bias and config.rotary_fraction == 1:
        hf_config = transformers.LlamaConfig(
            vocab_size=config.vocab_size, hidden_size=config.d_model, intermediate_size=config.d_ff,
            num_hidden_layers=config.n_layers, num_attention_heads=config.n_heads,
            num_key_value_heads=config.n_kv_heads, head_dim=config.head_dim, max_position_embeddings=2**20,
            rms_norm_eps=config.norm_eps, rope_theta=config.rope_theta,
            tie_word_embeddings=config.tie_embeddings, pad_token_id=0, bos_token_id=0, eos_token_id=None)
        cls = transformers.LlamaForCausalLM
    else:
        raise ValueError(f"{config.name}: no Hugging Face model of this shape (GPT-3-style or Llama-style)")
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        model = cls(hf_config)
    return model.to(dtype=parse_dtype(dtype)).eval().requires_grad_(False)


def hf_checkpoint(path_or_id: str, dtype="float32", device="cpu"):
    """transformers' own model of a checkpoint, the baseline beside ours of the same weights."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(path_or_id, dtype=parse_dtype(dtype))
    return model.to(device).eval().requires_grad_(False)


@torch.inference_mode()
def hf_generate(model, prompt: torch.Tensor, gen: int, cache=None) -> torch.Tensor:
    """Greedy ``generate()`` of exactly ``gen`` new tokens, as the paper's baseline ran; with a
    ``cache`` of the prompt's first tokens (:func:`hf_written_cache`), from there."""
    with warnings.catch_warnings():
        # transformers 5 renames generate()'s past_key_values to cache; 4.x knows only the old name.
        warnings.simplefilter("ignore", FutureWarning)
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                             max_new_tokens=gen, min_new_tokens=gen, pad_token_id=0,
                             **({"past_key_values": cache} if cache is not None else {}))
    return out[:, prompt.shape[1]:]


def hf_written_cache(model, batch: int, tokens: int):
    """A transformers DynamicCache holding ``tokens`` written (zero) keys and values per layer,
    the counterpart of our generator's ``prefill=False``."""
    import transformers

    config = model.config
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    cache = transformers.DynamicCache(config=config)
    weight = next(model.parameters())
    for layer in range(config.num_hidden_layers):
        kv = torch.zeros(batch, heads, tokens, head_dim, dtype=weight.dtype, device=weight.device)
        cache.update(kv, kv.clone(), layer)
    return cache


def case_config(model: str, scale: int = 1, layers: int = 0, vocab: int = 0, max_len: int = 0,
                checkpoint: str = "") -> ModelConfig:
    """A published config, widths divided by ``scale``, optionally with ``layers`` layers (the
    same pattern, cut or repeated) and a ``vocab``-token vocabulary, with positions for
    ``max_len`` tokens. With ``checkpoint`` (a folder or hub id): that checkpoint's config, as
    trained (neither scaled nor given positions it has no weights for)."""
    if checkpoint:
        if scale != 1 or layers or vocab:
            raise ValueError(f"{checkpoint}: a checkpoint's shape is its own; scale, layers and vocab do not apply")
        from .checkpoints import read_config

        return read_config(checkpoint)
    config = get_model(model)
    if scale != 1:
        config = config.scaled(scale)
    changes = {}
    if layers:
        changes["n_layers"] = layers
    if vocab:
        changes["vocab_size"] = vocab
    if changes:
        label = ",".join(f"{k}={v}" for k, v in (("layers", layers), ("vocab", vocab)) if v)
        config = dataclasses.replace(config, name=f"{config.name}[{label}]", stated_params=None, **changes)
    return with_context(config, max_len)


class _AutoChoices(logging.Handler):
    """Collects what backend="auto" picks (the registry logs each pick) while attached."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.chosen: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        op, name = record.args[:2]
        self.chosen[op] = name

    @contextlib.contextmanager
    def attached(self):
        from ..impls.registry import log

        level = log.level
        log.addHandler(self)
        log.setLevel(logging.INFO)
        try:
            yield self
        finally:
            log.removeHandler(self)
            log.setLevel(level)


def _ops_text(model: LanguageModel, chosen: dict[str, str]) -> str:
    """op=backend for every op the model runs: named ones as named, auto ones as picked."""
    named = {op: getattr(model.ops, op) for op in model.op_names}
    return ",".join(f"{op}={chosen.get(op, 'auto') if named[op] == 'auto' else named[op]}" for op in model.op_names)


def _not_run(config: ModelConfig, fp: Footprint, impl: str, length: int, budget_gib: float,
             prefill: bool = True) -> dict | None:
    """The status and reason of a case that cannot run as asked, before anything is built."""
    if config.learned_positions and length > config.learned_positions:
        return {"status": "unsupported",
                "reason": f"{config.name} has {config.learned_positions} learned positions; prompt + gen = {length}"}
    if budget_gib and fp.total > budget_gib * GIB:
        return {"status": "oom",
                "reason": f"weights + cache ({fp.total / GIB:.3g} GiB) exceed the stated budget of {budget_gib:g} GiB"}
    if impl == "hf" and importlib.util.find_spec("transformers") is None:
        return {"status": "unavailable", "reason": "transformers is not installed (pip install 'ssmbench[peers]')"}
    if impl == "hf" and not prefill and config.mamba_layers:
        return {"status": "unsupported",
                "reason": f"{config.name} has Mamba layers: a written cache is built for transformers' attention "
                          f"caches only (DynamicCache), so its generate() cannot start from one"}
    return None


def _hf_once(hf, ids: torch.Tensor, gen: int, dev: torch.device, prefill: bool = True) -> tuple[float, float]:
    """(prefill s, decode s) of one ``generate()``: the prefill is timed as its own one-token call,
    the decode is the rest of the full call. ``prefill`` False: each call starts from a cache of
    the prompt's first tokens as written (built before the clock starts)."""
    def cache():
        return None if prefill else hf_written_cache(hf, ids.shape[0], ids.shape[1] - 1)

    first = cache()
    _sync(dev)
    t0 = time.perf_counter()
    hf_generate(hf, ids, 1, first)
    _sync(dev)
    t1 = time.perf_counter()
    full = cache()
    _sync(dev)
    t2 = time.perf_counter()
    hf_generate(hf, ids, gen, full)
    _sync(dev)
    return t1 - t0, time.perf_counter() - t2 - (t1 - t0)


def _our_generator(config: ModelConfig, checkpoint: str, backends: str, dtype: str, dev: torch.device, seed: int,
                   batch: int, max_len: int, cuda_graphs: bool, state_dtype: str | None) -> Generator:
    """Our model of ``config`` (random weights) or of ``checkpoint`` (its weights), in a generator."""
    if checkpoint:
        from .checkpoints import from_pretrained

        lm = from_pretrained(checkpoint, ops=backends, dtype=dtype, device=str(dev))
    else:
        lm = build_model(config, ops=backends, dtype=dtype, device=str(dev), seed=seed)
    return Generator(lm, batch, max_len, cuda_graphs=cuda_graphs, state_dtype=state_dtype)


def _time_calls(once, repeats: int, batch: int, gen: int) -> tuple[dict, dict[str, str]]:
    """The first call timed apart (graph capture, lazy initialisation), with the ops auto picks
    during it recorded (named ones are passed through the OpBackends); then ``repeats`` timed
    calls. Returns the row's timing fields and the auto choices."""
    with _AutoChoices().attached() as choices:
        t0 = time.perf_counter()
        once()
        first_call_s = time.perf_counter() - t0
    samples = [once() for _ in range(repeats)]
    prefill = sum(s[0] for s in samples) / repeats
    decode = sum(s[1] for s in samples) / repeats
    total = prefill + decode
    totals_ms = [(p + d) * 1e3 for p, d in samples]
    return {"prefill_ms": prefill * 1e3, "decode_ms_per_token": decode * 1e3 / max(gen - 1, 1),
            "total_ms": total * 1e3, "tokens_per_s": batch * gen / total, "samples_ms": totals_ms,
            "median_ms": statistics.median(totals_ms), "first_call_ms": first_call_s * 1e3,
            "repeats": repeats}, choices.chosen


def generation_case(model: str, impl: str = "ssmbench", batch: int = 1, prompt: int = 2048, gen: int = 128,
                    dtype: str = "float16", device: str = "cuda", scale: int = 1, layers: int = 0,
                    vocab: int = 0, backends: str = "auto", cuda_graphs: bool = True, repeats: int = 3,
                    budget_gib: float = 0.0, state_dtype: str = "", threads: int = 0, seed: int = 0,
                    checkpoint: str = "", prefill: bool = True) -> dict:
    """Time greedy generation of ``gen`` tokens after a ``prompt``-token prompt at ``batch``.

    impl "ssmbench": our model (static cache; CUDA graphs for decode on a GPU when
    ``cuda_graphs``); "hf": the Hugging Face model of the same shape with ``generate()``.
    ``checkpoint`` (a folder or hub id): that checkpoint's weights, in our model
    (:func:`~.checkpoints.from_pretrained`) or in transformers' (``model`` is then its label).
    One untimed call first (graph capture, autotuning), then ``repeats`` timed calls;
    tokens_per_s = batch * gen / mean total time (prefill + decode), the paper's average of
    repeats; the row also keeps each call's total (samples_ms) and their median (median_ms). ``budget_gib`` > 0: a case
    whose weights + cache exceed it is not run and is recorded as "oom" with that reason.
    ``threads`` > 0 sets the worker's torch thread count (the row records it): on a CPU shared
    with other work, one thread per case keeps per-step times from waiting on busy cores.
    ``prefill`` False: the prompt's cache is taken as written and only decode is timed, at
    context ``prompt`` (:meth:`Generator.generate`); the "prefill" is then one decode step.
    """
    if impl not in ("ssmbench", "hf"):
        raise ValueError(f"impl must be 'ssmbench' or 'hf', got {impl!r}")
    config = case_config(model, scale, layers, vocab, prompt + gen, checkpoint)
    fp = footprint(config, batch, prompt + gen, dtype, state_dtype or None)
    row = {"model_name": config.name, "n_params": config.param_count(), "weight_bytes": fp.weights,
           "kv_bytes": fp.kv, "state_bytes": fp.mamba, "footprint_bytes": fp.total}
    refused = _not_run(config, fp, impl, prompt + gen, budget_gib, prefill)
    if refused:
        return {**row, **refused}
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    # The decode step's work at its mean context: set against the run's measured ceilings, it
    # says whether the step was bound by memory, compute or overhead.
    work = decode_step_work(config, batch, prompt + gen // 2, dtype, state_dtype or None)
    row.update(step_flops=work.flops, step_bytes=work.bytes, step_kv_bytes=work.kv_bytes)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        row["device_memory_bytes"] = torch.cuda.get_device_properties(dev).total_memory
    ids = torch.randint(0, config.vocab_size, (batch, prompt), generator=torch.Generator().manual_seed(seed)).to(dev)
    if impl == "ssmbench":
        generator = _our_generator(config, checkpoint, backends, dtype, dev, seed, batch, prompt + gen,
                                   cuda_graphs and dev.type == "cuda", state_dtype or None)
        row.update(cache_bytes=generator.cache.nbytes, cuda_graphs=generator.cuda_graphs)

        def once():
            result = generator.generate(ids, gen, prefill)
            return result.prefill_s, result.decode_s
    else:
        hf = hf_checkpoint(checkpoint, dtype, device) if checkpoint else hf_model(config, dtype, device, seed)
        once = partial(_hf_once, hf, ids, gen, dev, prefill)
    timing, chosen = _time_calls(once, repeats, batch, gen)
    row.update(timing, ops=_ops_text(generator.model, chosen) if impl == "ssmbench" else "transformers generate()")
    if impl == "ssmbench":
        # The allocated cache against the closed form: exact, so the portable gate checks it too.
        row.update(n_graphs=len(generator.graphs), equal=generator.cache.nbytes == fp.cache)
    if dev.type == "cuda":
        row["peak_mem_bytes"] = torch.cuda.max_memory_allocated(dev)
    return row
