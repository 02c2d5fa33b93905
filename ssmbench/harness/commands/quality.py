"""ssmbench quality: lm-eval zero-shot tasks on real checkpoints in our models, stored as a run."""
from __future__ import annotations

from pathlib import Path

from .options import positive


def run(args) -> int:
    from ...impls.registry import OP_NAMES, get_backend
    from ...models.checkpoints import read_config
    from ...models.layers import OpBackends
    from ...suites.quality import TASKS, quality_cases
    from ..session import start_run

    try:
        from ...models.quality import task_manager
    except ImportError as exc:
        raise ValueError(f"quality needs lm-eval ({exc}); pip install 'ssmbench[quality]'") from None
    tasks = [t.strip() for t in (args.tasks or ",".join(TASKS)).split(",") if t.strip()]
    backends = args.backends or ["auto"]
    # Everything named is checked before anything runs: each checkpoint's config, each backend
    # choice, each task.
    for model in args.model:
        read_config(model)
    for ops in backends:
        chosen = OpBackends.of(ops)
        for op in OP_NAMES:
            if getattr(chosen, op) != "auto":
                get_backend(op, getattr(chosen, op))  # names the op and its known backends
    task_manager(tasks, str(args.include_path or ""))
    if args.device == "cuda":
        from .options import require_cuda

        require_cuda("--device cuda")
    cases = quality_cases(args.model, tasks, backends, limit=args.limit or 0, batch_size=args.batch_size,
                          include_path=str(args.include_path or ""), dtype=args.dtype, device=args.device)
    summary = start_run("quality", cases, suite="quality", preset="adhoc", device=args.device,
                        results_dir=args.results_dir, progress=not args.quiet)
    print(summary.line(), flush=True)
    if args.report:
        from ..report import write_report

        print(f"report: {write_report([summary.run_path], out_dir=args.reports_dir)}")
    return 0


def add(sub) -> None:
    p = sub.add_parser("quality", help="score checkpoints on lm-eval's zero-shot tasks in our models (Table 3)")
    p.add_argument("--model", action="append", required=True, metavar="PATH_OR_ID",
                   help="a checkpoint folder or Hugging Face hub id; repeatable")
    p.add_argument("--tasks", help="lm-eval task names, comma-separated (default: Table 3's six)")
    p.add_argument("--backends", action="append", metavar="OP=NAME,...",
                   help="the op backends of our model (default auto); repeat to score each choice, and see "
                        "whether a kernel changes accuracy")
    p.add_argument("--limit", type=positive(int), help="score this many documents of each task (a smoke test)")
    p.add_argument("--include-path", type=Path, help="a folder of lm-eval YAML tasks of your own")
    p.add_argument("--batch-size", type=positive(int), default=1)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32")
    p.add_argument("--report", action="store_true", help="write the report when done")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)
