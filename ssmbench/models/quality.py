"""Our models behind lm-eval's ``LM`` interface, so zero-shot quality ([M1] Table 3) is scored on
the same weights and op backends that the speed suites time.

:class:`SsmbenchLM` is a ``lm_eval.api.model.TemplateLM`` (an ``LM``): lm-eval tokenizes the
requests as it does for its own ``hf`` model (context / continuation split, BOS or EOS as the prefix
of an empty context, rolling windows for perplexity), and the model under it is ours. Requests are
scored in batches, right-padded: a causal model's logits at a position do not depend on later
tokens, attention and SSM alike, so padding needs no mask. ``generate_until`` decodes greedily on
our static cache (prefill, then step ops), stopping at any stop sequence or EOS.

Registered with lm-eval as ``ssmbench``: ``lm_eval --model ssmbench --model_args
pretrained=PATH,backends=selective_scan=torch_fast`` once this module is imported.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import (_add_special_kwargs, handle_stop_sequences, has_bos_prefix, normalize_gen_kwargs,
                                  resolve_max_length)

from .checkpoints import from_pretrained, load_tokenizer, source_config
from .lm import LanguageModel


@register_model("ssmbench")
class SsmbenchLM(TemplateLM):
    """lm-eval's view of one of our models.

    pretrained: a checkpoint folder or hub id (our model from :func:`from_pretrained` and the
    folder's tokenizer); or pass ``model`` and ``tokenizer`` directly. ``backends``: the op
    backends ("op=name,..."), as everywhere in ssmbench. ``max_length`` defaults as lm-eval's
    ``hf`` model resolves it (the checkpoint's positions, else the tokenizer's, else 2048).
    """

    def __init__(self, pretrained: str | None = None, *, model: LanguageModel | None = None, tokenizer=None,
                 backends: str = "auto", dtype: str = "float32", device: str = "cpu", batch_size: int | str = 1,
                 max_length: int | None = None, max_gen_toks: int = 256, add_bos_token: bool | None = None,
                 prefix_token_id: int | None = None):
        super().__init__()
        if (pretrained is None) == (model is None):
            raise ValueError("SsmbenchLM: pass either 'pretrained' (a checkpoint) or 'model', not both or neither")
        if model is None:
            model = from_pretrained(pretrained, ops=backends, dtype=dtype, device=device)
            tokenizer = tokenizer or load_tokenizer(pretrained)
        elif backends != "auto":
            model.ops = backends
        if tokenizer is None:
            raise ValueError(f"SsmbenchLM: {pretrained or model.config.name} has no tokenizer; pass 'tokenizer'")
        if str(batch_size) == "auto":
            raise ValueError("SsmbenchLM: batch_size must be a number (no 'auto' search)")
        self.model, self.tokenizer = model, tokenizer
        self.batch_size = int(batch_size)
        self.add_bos_token, self.custom_prefix_token_id = add_bos_token, prefix_token_id
        self._max_gen_toks = int(max_gen_toks)
        self._max_length = int(max_length) if max_length else resolve_max_length(
            source_config(pretrained) if pretrained else None, tokenizer)
        if model.config.learned_positions:
            self._max_length = min(self._max_length, model.config.learned_positions)

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        # As lm-eval's hf model: a chosen prefix, else BOS, else EOS.
        if self.custom_prefix_token_id is not None:
            return self.custom_prefix_token_id
        if self.tokenizer.bos_token_id is not None:
            return self.tokenizer.bos_token_id
        return self.eot_token_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len=None,
                   **kwargs) -> list[int]:
        special = _add_special_kwargs(add_special_tokens, self.add_bos_token)
        if add_special_tokens is None and has_bos_prefix(string, self.tokenizer.decode(self.prefix_token_id)):
            special["add_special_tokens"] = False
        ids = self.tokenizer.encode(string, **special)
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    @torch.inference_mode()
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        """(key, context ids, continuation ids) -> (log p(continuation | context), whether greedy
        decoding gives the continuation), the input cut on the left to max_length tokens."""
        out = []
        size = override_bs or self.batch_size
        for start in range(0, len(requests), size):
            chunk = requests[start:start + size]
            inputs = [(ctx + cont)[-(self.max_length + 1):][:-1] for _, ctx, cont in chunk]
            ids = torch.zeros(len(chunk), max(map(len, inputs)), dtype=torch.long)
            for row, seq in enumerate(inputs):
                ids[row, :len(seq)] = torch.tensor(seq)
            logprobs = F.log_softmax(self.model(ids.to(self.device)).float(), dim=-1).cpu()
            for row, ((key, _, cont), seq) in enumerate(zip(chunk, inputs)):
                scored = logprobs[row, len(seq) - len(cont):len(seq)]
                target = torch.tensor(cont)
                answer = (scored.gather(-1, target[:, None]).sum().item(), bool((scored.argmax(-1) == target).all()))
                if key is not None:
                    self.cache_hook.add_partial("loglikelihood", key, answer)
                out.append(answer)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        totals = []
        for (string,) in (r.args for r in requests):
            windows = [(None, *lm_utils.make_disjoint_window(w)) for w in lm_utils.get_rolling_token_windows(
                token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)]
            total = sum(ll for ll, _ in self._loglikelihood_tokens(windows, override_bs=len(windows)))
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
            totals.append(total)
        return totals

    @torch.inference_mode()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        out = []
        for context, gen_kwargs in (r.args for r in requests):
            kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
            if kwargs.get("do_sample"):
                raise ValueError("SsmbenchLM.generate_until decodes greedily; the task asks for do_sample=True")
            until = handle_stop_sequences(kwargs.get("until"), eos=eos)
            budget = kwargs["max_gen_toks"]
            if budget >= self.max_length:
                raise ValueError(f"max_gen_toks={budget} must be below the model's max_length={self.max_length}")
            prompt = self.tok_encode(context, left_truncate_len=self.max_length - budget) or [self.prefix_token_id]
            text = self._greedy(prompt, budget, until)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            out.append(text)
        return out

    def _greedy(self, prompt: list[int], budget: int, until: list[str]) -> str:
        """Greedy continuation of ``prompt``, at most ``budget`` tokens, cut before the first
        stop sequence (EOS among them)."""
        ids = torch.tensor([prompt], device=self.device)
        cache = self.model.new_cache(1, len(prompt) + budget)
        logits = self.model.prefill(ids, cache)
        tokens: list[int] = []
        for pos in range(len(prompt), len(prompt) + budget):
            token = logits.argmax(-1)
            tokens.append(int(token))
            if tokens[-1] == self.eot_token_id:
                break
            text = self.tok_decode(tokens)
            if any(stop and stop in text for stop in until):
                break
            if pos + 1 < len(prompt) + budget:
                logits = self.model.step(token, cache, pos)
        text = self.tok_decode(tokens)
        for stop in until:
            if stop:
                text = text.split(stop)[0]
        return text



def task_manager(tasks: list[str], include_path: str = ""):
    """lm-eval's tasks: those of ``include_path`` alone when they hold every task asked for
    (indexing lm-eval's thousands of built-in tasks takes half a minute), else all of them. A task
    that neither knows is an error that names it."""
    from lm_eval.tasks import TaskManager

    if include_path:
        local = TaskManager(include_path=include_path, include_defaults=False)
        if all(t in local.all_tasks for t in tasks):
            return local
    manager = TaskManager(include_path=include_path or None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if not unknown:
        return manager
    raise ValueError(f"tasks: lm-eval knows no task {', '.join(map(repr, unknown))}"
                     + (f" (nor does {include_path})" if include_path else "")
                     + "; lm_eval ls tasks lists them, --include-path adds a folder of YAML tasks")


def quality_case(model: str, task: str, backends: str = "auto", limit: int = 0, batch_size: int = 1,
                 include_path: str = "", dtype: str = "float32", device: str = "cpu", metric: str = "") -> dict:
    """One task of lm-eval zero-shot on a checkpoint in our model under ``backends``: ``metric`` (the
    task's first when empty) with lm-eval's stderr, and the perplexity where the task gives one
    (LAMBADA). ``limit`` > 0 scores that many documents only (a smoke test, not Table 3)."""
    from lm_eval import simple_evaluate

    lm = SsmbenchLM(model, backends=backends, dtype=dtype, device=device, batch_size=batch_size)
    out = simple_evaluate(model=lm, tasks=[task], task_manager=task_manager([task], include_path),
                          limit=limit or None)
    result = out["results"][task]
    metrics = [k.split(",")[0] for k in result if "," in k and "_stderr" not in k]
    metric = metric or metrics[0]
    if f"{metric},none" not in result:
        raise ValueError(f"task {task!r} gives no metric {metric!r}; it gives {', '.join(metrics)}")

    def number(key):
        value = result.get(key)
        return float(value) if isinstance(value, (int, float)) else None

    row = {"metric": metric, "value": number(f"{metric},none"), "stderr": number(f"{metric}_stderr,none"),
           "n_docs": int(out["n-samples"][task]["effective"]), "ops": lm.model.ops.text()}
    if "perplexity,none" in result:
        row.update(perplexity=number("perplexity,none"), perplexity_stderr=number("perplexity_stderr,none"))
    return row
