"""The lm-eval adapter: a tiny checkpoint with a word-level tokenizer made here, scored by our
adapter and by lm-eval's own hf model on a local multiple-choice task (a YAML task over a JSON
file) and on the rolling-loglikelihood and generation requests: the same numbers."""
from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the checkpoint is made with transformers")
pytest.importorskip("lm_eval", reason="the adapter is lm-eval's LM interface (pip install 'ssmbench[quality]')")
pytest.importorskip("accelerate", reason="lm-eval's own hf model, the reference here, needs accelerate")

from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from ssmbench.models.quality import SsmbenchLM  # noqa: E402

WORDS = ["<unk>", "<eos>", "the", "a", "cat", "dog", "sat", "ran", "on", "mat", "log", "big", "small", "red"]
DOCS = [
    {"question": "the cat sat on the", "choices": ["mat", "log", "dog"], "answer": 0},
    {"question": "a big dog", "choices": ["ran", "sat"], "answer": 0},
    {"question": "the small red", "choices": ["cat", "dog", "mat", "log"], "answer": 1},
    {"question": "a dog ran on a", "choices": ["log", "mat"], "answer": 1},
    {"question": "the red cat", "choices": ["sat", "ran", "on"], "answer": 2},
    {"question": "big", "choices": ["cat", "dog"], "answer": 0},
]
TASK = "ssmbench_tiny_mc"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random Mamba with a word-level tokenizer, saved as one folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder = tmp_path_factory.mktemp("tiny-mamba-words")
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    words = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")
    words.save_pretrained(folder)
    config = transformers.MambaConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2, state_size=8,
                                      time_step_rank=4, pad_token_id=0, bos_token_id=1, eos_token_id=1)
    torch.manual_seed(0)
    transformers.MambaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tasks")
    data = folder / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (folder / f"{TASK}.yaml").write_text(f"""task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")
    return folder


def test_multiple_choice_task_scores_as_lm_evals_hf_model(checkpoint, task_dir, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # Only the local task: indexing lm-eval's thousands of built-in ones takes half a minute here.
    tasks = TaskManager(include_path=str(task_dir), include_defaults=False)
    runs = {name: simple_evaluate(model=model, model_args=args, tasks=[TASK], task_manager=tasks, log_samples=True)
            for name, model, args in (
                ("ours", SsmbenchLM(str(checkpoint), backends="selective_scan=torch_fast"), None),
                ("hf", "hf", f"pretrained={checkpoint},dtype=float32,device=cpu"))}
    ours, hf = (runs[k] for k in ("ours", "hf"))
    assert ours["results"][TASK]["acc,none"] == hf["results"][TASK]["acc,none"]
    a = [ll for s in ours["samples"][TASK] for (ll, _), in s["resps"]]
    b = [ll for s in hf["samples"][TASK] for (ll, _), in s["resps"]]
    assert len(a) == sum(len(d["choices"]) for d in DOCS)
    assert torch.allclose(torch.tensor(a), torch.tensor(b), rtol=1e-5, atol=1e-5)


def test_rolling_loglikelihood_and_generation_as_lm_evals_hf_model(checkpoint):
    # max_length 6: the 11-token text spans several rolling windows.
    ours = SsmbenchLM(str(checkpoint), max_length=6)
    hf = HFLM(pretrained=str(checkpoint), dtype="float32", device="cpu", max_length=6)
    text = "the big red dog ran on the mat a cat sat"
    rolling = [Instance("loglikelihood_rolling", {}, (text,), 0), Instance("loglikelihood_rolling", {}, ("cat",), 1)]
    got, want = ours.loglikelihood_rolling(rolling), hf.loglikelihood_rolling(rolling)
    assert torch.allclose(torch.tensor(got), torch.tensor(want, dtype=torch.float32), rtol=1e-5)
    # Batched (right-padded) scoring gives each request its own loglikelihood.
    pairs = [Instance("loglikelihood", {}, (ctx, cont), i) for i, (ctx, cont) in
             enumerate([("the cat", " sat"), ("a big red dog ran on", " the mat"), ("", "cat"), ("dog", " ran")])]
    batched = SsmbenchLM(str(checkpoint), max_length=6, batch_size=3).loglikelihood(pairs)
    reference = hf.loglikelihood(pairs)
    assert [g for _, g in batched] == [g for _, g in reference]
    assert torch.allclose(torch.tensor([ll for ll, _ in batched]), torch.tensor([ll for ll, _ in reference]),
                          rtol=1e-5)
    # A greedy continuation, cut at a stop word, and one that runs to max_gen_toks.
    generate = [Instance("generate_until", {}, ("the cat", {"until": [" cat"], "do_sample": False,
                                                              "max_gen_toks": 5}), 0),
                Instance("generate_until", {}, ("a dog", {"until": ["zebra"], "max_gen_toks": 5}), 1)]
    texts = ours.generate_until(generate)
    assert texts == hf.generate_until(generate)
    assert " cat" not in texts[0] and len(texts[1].split()) <= 5
    with pytest.raises(ValueError, match="decodes greedily"):
        ours.generate_until([Instance("generate_until", {}, ("a", {"do_sample": True, "temperature": 1.0}), 0)])


def _quality(tmp_path, *args):
    from ssmbench.harness import cli

    return cli.main(["--results-dir", str(tmp_path / "results"), "--reports-dir", str(tmp_path / "reports"),
                     "quality", "--quiet", *args])


def test_the_quality_command_stores_a_run_and_reports_what_a_kernel_changes(checkpoint, task_dir, tmp_path,
                                                                              monkeypatch, capsys):
    from ssmbench.harness.store import load_runs

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert _quality(tmp_path, "--model", str(checkpoint), "--tasks", TASK, "--include-path", str(task_dir),
                    "--backends", "selective_scan=torch_fast", "--backends", "selective_scan=torch",
                    "--report") == 0, capsys.readouterr().err
    rows = load_runs(next((tmp_path / "results").iterdir()))
    assert list(rows["status"]) == ["ok", "ok"] and set(rows["metric"]) == {"acc"}
    assert rows["fingerprint"].notna().all() and (rows["n_docs"] == len(DOCS)).all()
    assert rows["value"].nunique() == 1 and rows["stderr"].notna().all()  # two scan kernels, one accuracy
    report = next((tmp_path / "reports").iterdir()) / "index.md"
    text = report.read_text()
    assert "Table 3: zero-shot scores" in text and "Does a kernel change accuracy?" in text


@pytest.mark.parametrize("args, message", [
    (["--model", "no-such-folder"], "no-such-folder"),
    (["--model", "nobody/no-such-model"], "nobody/no-such-model"),
    (["--tasks", "no_such_task"], "no task 'no_such_task'"),
    (["--backends", "selective_scan=nope"], "nope"),
])
def test_the_quality_command_refuses_bad_input_in_one_line(args, message, checkpoint, task_dir, tmp_path,
                                                          monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    given = {"--model": str(checkpoint), "--tasks": TASK}
    given.update(dict(zip(args[::2], args[1::2])))
    argv = [a for pair in given.items() for a in pair] + ["--include-path", str(task_dir)]
    assert _quality(tmp_path, *argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "results").exists()  # refused before a run folder was made


def test_table3_verdicts_use_the_stderr_and_the_stated_noise():
    import pandas as pd

    from ssmbench.suites.quality import PAPER, TASKS, judge

    def rows(shift, stderr):
        paper = PAPER["Mamba-130M"][1:]
        return pd.DataFrame([{"status": "ok", "model": "state-spaces/mamba-130m-hf", "backends": "auto", "task": t,
                              "metric": "acc", "value": (p + shift) / 100, "stderr": stderr / 100, "n_docs": 1000}
                             for t, p in zip(TASKS, paper)])

    (close,) = judge(rows(0.5, 0.4), {})
    assert close.verdict == "holds" and close.claim_id == "C6.mamba-130m-auto"
    assert judge(rows(3.0, 0.4), {})[0].verdict == "does not hold"
    assert judge(rows(0.5, 5.0), {})[0].verdict == "undecided"  # a --limit run: too few documents to tell
    tiny = rows(0, 1).assign(model="./tiny-mamba")
    assert judge(tiny, {}) == []  # scored, but the paper does not list it
