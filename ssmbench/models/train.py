"""One training step (forward, next-token loss, backward, AdamW step) of a model: the memory it
holds and its speed.

Memory is counted exactly, as bytes of storages, so that it does not depend on the machine:
the parameters, their gradients, AdamW's states, and the activations autograd saves for the
backward (seen through ``torch.autograd.graph.saved_tensors_hooks``; each storage once however
many views of it are saved; parameters saved by an op are the parameters, not counted again).
On torch's "meta" device the step allocates nothing and computes nothing, so the count of a
125M model at batch 32 costs no memory; every op must have a meta kernel (our chunked torch SSD
reads values to choose its path, so Mamba-2 is counted there only through our Triton SSD, whose
launches do nothing on meta: on a CPU under TRITON_INTERPRET=1). A stack whose layers are
all alike (Mamba, a Transformer) is counted at depths 1 and 2 and the count extended to the full
depth: every figure is affine in the number of identical layers, and the scans' per-step Python
loops make a full-depth step on meta take minutes. ``training_memory_case`` records the depths it
counted.

On a GPU the same step also reports ``torch.cuda.max_memory_allocated``, which includes what the
count leaves out (temporaries, the allocator's rounding and the CUDA context's workspaces).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Mapping

import torch
import torch.nn.functional as F

from ..harness.timing import measure
from .configs import ModelConfig
from .generate import case_config
from .lm import LanguageModel, build_model


@dataclass(frozen=True)
class StepMemory:
    """Bytes one training step holds: weights, gradients, optimizer states, saved activations."""

    params: int
    grads: int
    optimizer: int
    activations: int
    # The saved activations by the class of the innermost module that saved them.
    by_module: Mapping[str, int] = field(default_factory=dict, compare=False)

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer + self.activations

    def extended(self, deeper: "StepMemory", layers: int) -> "StepMemory":
        """From this count at depth 1 and ``deeper`` at depth 2: the count at ``layers`` layers."""
        def grow(a: int, b: int) -> int:
            return a + (layers - 1) * (b - a)

        fields = ("params", "grads", "optimizer", "activations")
        modules = set(self.by_module) | set(deeper.by_module)
        return StepMemory(*(grow(getattr(self, f), getattr(deeper, f)) for f in fields),
                          {m: grow(self.by_module.get(m, 0), deeper.by_module.get(m, 0)) for m in sorted(modules)})


def _storage_bytes(tensors) -> tuple[int, set[int]]:
    """Bytes of the distinct storages of ``tensors`` (views and tied weights counted once), and
    the storages' identities (the address of the storage object: meta storages have no data)."""
    seen: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage._cdata] = storage.nbytes()
    return sum(seen.values()), set(seen)


def lm_loss(model: LanguageModel, ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy over every position but the last, in float32."""
    logits = model(ids)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())


def train_model(config: ModelConfig, ops="auto", dtype: str = "float32", device: str = "cpu",
                seed: int = 0) -> tuple[LanguageModel, torch.optim.AdamW]:
    """A model in training mode with every weight trainable, and its AdamW optimizer."""
    model = build_model(config, ops=ops, dtype=dtype, device=device, seed=seed).train().requires_grad_(True)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4)


class SavedActivations:
    """While entered, counts the bytes of the distinct storages autograd saves for the backward,
    leaving out those of ``exclude`` (the parameters). With ``model``, each storage is also put
    down to the innermost module running when it was first saved (by class name; "loss" outside
    every module), which shows which layer holds the memory."""

    def __init__(self, exclude=(), model: torch.nn.Module | None = None):
        _, self.excluded = _storage_bytes(exclude)
        self.saved: dict[int, int] = {}
        self.owner: dict[int, str] = {}
        self._model, self._running, self._handles = model, [], []
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in self.excluded and storage._cdata not in self.saved:
            self.saved[storage._cdata] = storage.nbytes()
            self.owner[storage._cdata] = self._running[-1] if self._running else "loss"
        return t

    # Module hooks: returning None leaves the module's inputs and outputs as they are.
    def _enter_module(self, module, args) -> None:
        self._running.append(type(module).__name__)

    def _leave_module(self, module, args, output) -> None:
        self._running.pop()

    @property
    def nbytes(self) -> int:
        return sum(self.saved.values())

    def by_module(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for key, n in self.saved.items():
            out[self.owner[key]] = out.get(self.owner[key], 0) + n
        return dict(sorted(out.items()))

    def __enter__(self) -> "SavedActivations":
        if self._model is not None:
            for module in self._model.modules():
                self._handles += [module.register_forward_pre_hook(self._enter_module),
                                  module.register_forward_hook(self._leave_module)]
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def step_memory(model: LanguageModel, optimizer: torch.optim.Optimizer, ids: torch.Tensor) -> StepMemory:
    """Run one training step and count what it held (see the module's docstring)."""
    params, _ = _storage_bytes(model.parameters())
    optimizer.zero_grad(set_to_none=True)
    with SavedActivations(exclude=model.parameters(), model=model) as saved:
        loss = lm_loss(model, ids)
    loss.backward()
    optimizer.step()
    grads, _ = _storage_bytes(p.grad for p in model.parameters() if p.grad is not None)
    states, _ = _storage_bytes(v for state in optimizer.state.values() for v in state.values()
                               if isinstance(v, torch.Tensor))
    return StepMemory(params, grads, states, saved.nbytes, saved.by_module())


def _ids(config: ModelConfig, batch: int, seqlen: int, device: str, seed: int) -> torch.Tensor:
    if device == "meta":
        return torch.empty(batch, seqlen, dtype=torch.long, device="meta")
    ids = torch.randint(0, config.vocab_size, (batch, seqlen), generator=torch.Generator().manual_seed(seed))
    return ids.to(device)


def layer_params(config: ModelConfig) -> int:
    """Weights outside the token and position embeddings (and the LM head): what "equal size"
    compares when tiny models' embeddings would dominate their counts."""
    embeddings = config.vocab_size * config.d_model * (1 if config.tie_embeddings else 2)
    return config.param_count() - embeddings - config.learned_positions * config.d_model


def uniform_layers(config: ModelConfig) -> bool:
    """Whether every layer has the same mixer and MLP (the count extends from depths 1 and 2)."""
    return len({(config.mixer(i), config.is_moe(i)) for i in range(config.n_layers)}) == 1


def count_step(config: ModelConfig, batch: int, seqlen: int, ops="auto", dtype: str = "float32",
               device: str = "meta", seed: int = 0) -> StepMemory:
    """The exact count of one training step of the full ``config``."""
    model, optimizer = train_model(config, ops, dtype, device, seed)
    return step_memory(model, optimizer, _ids(config, batch, seqlen, device, seed))


def extended_count(config: ModelConfig, batch: int, seqlen: int, ops="auto", dtype: str = "float32",
                   device: str = "meta", seed: int = 0) -> StepMemory:
    """The count of ``config`` at full depth from steps at depths 1 and 2 (uniform stacks only)."""
    if not uniform_layers(config):
        raise ValueError(f"{config.name}: its layers differ, so its count cannot be extended from depths 1 and 2")
    one, two = (count_step(dataclasses.replace(config, n_layers=n), batch, seqlen, ops, dtype, device, seed)
                for n in (1, 2))
    return one.extended(two, config.n_layers)


def training_memory_case(model: str, batch: int, seqlen: int, scale: int = 1, layers: int = 0, vocab: int = 0,
                         dtype: str = "float32", device: str = "meta", backends: str = "auto",
                         extend: bool = True, seed: int = 0) -> dict:
    """The row of one memory case: the exact count of one training step (on ``device``, extended
    from depths 1 and 2 where ``extend`` and the stack is uniform); on a GPU also the peak the
    allocator saw during the step."""
    config = case_config(model, scale, layers, vocab, seqlen)
    extended = extend and uniform_layers(config) and config.n_layers > 2
    count = (extended_count if extended else count_step)(config, batch, seqlen, backends, dtype, device, seed)
    row = {"model_name": config.name, "n_params": config.param_count(), "params_bytes": count.params,
           "grads_bytes": count.grads, "optimizer_bytes": count.optimizer, "activation_bytes": count.activations,
           "total_bytes": count.total, "counted_depths": "1,2" if extended else str(config.n_layers),
           **{f"saved_in_{module}_bytes": n for module, n in count.by_module.items()},
           # Which figures are exact, for the portable gate: they must not change between machines.
           "exact_columns": "params_bytes,grads_bytes,optimizer_bytes,activation_bytes,total_bytes"}
    if device == "cuda":
        row.update(_cuda_peak(config, batch, seqlen, backends, dtype, seed))
    return row


def _cuda_peak(config: ModelConfig, batch: int, seqlen: int, ops, dtype: str, seed: int) -> dict:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model, optimizer = train_model(config, ops, dtype, "cuda", seed)
    ids = _ids(config, batch, seqlen, "cuda", seed)
    full = step_memory(model, optimizer, ids)
    torch.cuda.synchronize()
    return {"cuda_peak_bytes": torch.cuda.max_memory_allocated(), "cuda_counted_bytes": full.total}


def training_step_case(model: str, batch: int, seqlen: int, scale: int = 1, layers: int = 0, vocab: int = 0,
                       dtype: str = "float32", device: str = "cpu", backends: str = "auto", threads: int = 0,
                       min_repeats: int = 3, max_repeats: int = 20, budget_s: float = 2.0, seed: int = 0) -> dict:
    """The row of one throughput case: one training step (forward, loss, backward, AdamW step)
    timed with the harness's timer; tokens_per_s = batch x seqlen / median step time."""
    if threads:
        torch.set_num_threads(threads)
    config = case_config(model, scale, layers, vocab, seqlen)
    net, optimizer = train_model(config, backends, dtype, device, seed)
    ids = _ids(config, batch, seqlen, device, seed)

    def step():
        optimizer.zero_grad(set_to_none=True)
        lm_loss(net, ids).backward()
        optimizer.step()

    timing = measure(step, "cuda" if device == "cuda" else "cpu", min_repeats=min_repeats,
                     max_repeats=max_repeats, budget_s=budget_s)
    stats = timing.stats()
    return {"model_name": config.name, "n_params": config.param_count(), "n_layer_params": layer_params(config),
            **stats, "samples_ms": timing.samples_ms, "tokens_per_s": batch * seqlen / (stats["median_ms"] * 1e-3)}
