"""The ``ssmbench`` command line."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path


def _shape(text: str) -> dict[str, str]:
    params = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"expected key=value[,key=value...], got {item!r}")
        params[key.strip()] = value.strip()
    return params


def _positive(kind: type):
    """An argparse type that accepts only values of ``kind`` above zero, so a bad size is refused
    before any case runs instead of ending as failed rows."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0:  # ``not > 0`` also refuses NaN
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value
    return parse


def cmd_list(args) -> int:
    from tabulate import tabulate

    from ..impls import OP_NAMES, backends, get_op, reasons

    rows = []
    for op in [args.op] if args.op else OP_NAMES:
        problem = get_op(op).default_problem.replace(device=args.device) if args.device else None
        for backend in backends(op).values():
            status, why = reasons(backend, problem)
            rows.append([op, backend.name, backend.kind, "/".join(backend.devices), status,
                         "; ".join(why) or backend.description])
    print(tabulate(rows, headers=["op", "backend", "kind", "devices", "status", "reason / description"],
                   maxcolwidths=[None, None, None, None, None, 70]))
    return 0


def cmd_compare(args) -> int:
    from ..impls import backends, get_op
    from .case import Case
    from .session import start_run

    op = get_op(args.op)
    if args.device == "cuda":
        _require_cuda("--device cuda")
    params = {**op.default_problem.params(), **args.shape, "device": args.device, "dtype": args.dtype}
    problem = op.problem_type.from_params(params)  # names a bad key or value before anything runs
    # The float64 reference is the ground truth, and slow: timed only when named.
    names = (args.backends.split(",") if args.backends
             else [n for n, b in backends(args.op).items() if b.kind != "reference"])
    for name in names:
        if name not in backends(args.op):
            from ..impls.base import unknown

            raise unknown(f"backend of {args.op}", name, backends(args.op))
    if args.interleave or args.stability:
        cases = [Case(suite="compare", op=args.op, backends=tuple(names), params=problem.params(),
                      stability=args.stability, budget_s=args.budget, timeout_s=args.timeout * len(names))]
    else:
        cases = [Case(suite="compare", op=args.op, backend=name, params=problem.params(), series=name,
                      budget_s=args.budget, timeout_s=args.timeout)
                 for name in names]
    summary = start_run(f"compare-{args.op}", cases, suite="compare", preset="adhoc", device=args.device,
                        results_dir=args.results_dir, threads=args.threads, progress=not args.quiet)
    from .report import comparison_table

    print(comparison_table(summary.run_path))
    print(summary.line())
    return 0


def _require_cuda(what: str) -> None:
    """Refused in one line before a run folder exists, not as a traceback from inside torch."""
    import torch

    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise ValueError(f"{what} runs on a CUDA GPU, and torch {torch.__version__} ({build}) sees none here")


def _names(text: str, option: str, known) -> set[str]:
    """The comma-separated names of ``option``, each checked against ``known``."""
    names = {n.strip() for n in text.split(",") if n.strip()}
    unknown = sorted(names - set(known))
    if unknown:
        raise ValueError(f"{option}: unknown {', '.join(unknown)}; expected some of: {', '.join(sorted(known))}")
    return names


def cmd_run(args) -> int:
    from ..impls import OP_NAMES, backends
    from .executors import from_options
    from .session import resume_run, start_run

    executor = from_options(args.executor, streams=args.streams, ray_address=args.ray_address, cluster=args.cluster,
                            slurm_partition=args.slurm_partition, timeout_min=args.timeout_min,
                            gpus_per_node=args.gpus_per_node)
    if args.resume:
        summaries = [resume_run(args.resume, results_dir=args.results_dir, threads=args.threads,
                                progress=not args.quiet, executor=executor)]
    else:
        from ..suites import get_suite
        from .store import new_job_id

        if not args.suite:
            raise ValueError("--suite is required unless --resume names a run")
        suites = [get_suite(name) for name in args.suite.split(",")]  # all names checked first
        ops = _names(args.ops, "--ops", OP_NAMES) if args.ops else None
        keep = (_names(args.backends, "--backends", {name for op in OP_NAMES for name in backends(op)})
                if args.backends else None)
        summaries = []
        job_id = new_job_id()  # `report latest` reports every run of this command
        for suite in suites:
            preset = args.preset or suite.default_preset
            cases = suite.cases(preset)
            for model in args.model or ():
                if suite.checkpoint_cases is None:
                    from ..suites import available_suites

                    takes = [n for n in available_suites() if get_suite(n).checkpoint_cases is not None]
                    raise ValueError(f"--model: suite {suite.name} builds no models; the suites that do: "
                                     f"{', '.join(takes)}")
                cases += suite.checkpoint_cases(preset, model)
            if ops:
                cases = [c for c in cases if c.op in ops]
            if keep:
                cases = [c for c in cases if not c.backend or c.backend in keep]
            device = "cuda" if any(c.params.get("device") == "cuda" for c in cases) else "cpu"
            if device == "cuda":
                _require_cuda(f"--preset {preset} of suite {suite.name}")
            summaries.append(start_run(f"{suite.name}-{preset}", cases, suite=suite.name, preset=preset,
                                       device=device, results_dir=args.results_dir,
                                       threads=args.threads or suite.threads.get(preset), progress=not args.quiet,
                                       executor=executor, job_id=job_id))
            print(summaries[-1].line(), flush=True)
    if args.resume:
        print(summaries[0].line())
    if args.report:
        from .report import write_report

        print(f"report: {write_report([s.run_path for s in summaries], out_dir=args.reports_dir)}")
    return 0


def cmd_report(args) -> int:
    from .report import write_report

    print(write_report(args.runs or ["latest"], results_dir=args.results_dir, out_dir=args.reports_dir))
    return 0


def cmd_gate(args) -> int:
    from .baselines import find_baseline
    from .gate import EXIT_FAIL, confirm, gate
    from .gate_input import load_input
    from .noise import measure_noise

    first = _read_findings(args.confirm) if args.confirm else {}
    # Measured once, before any comparison: the runs were measured on this machine's recent past.
    noise = None if args.no_noise else measure_noise()
    results = []
    for spec in args.run:
        run = load_input(spec, args.results_dir)
        base_spec = args.baseline if args.baseline != "auto" else find_baseline(run, args.portable, args.baselines)
        baseline = load_input(base_spec, args.results_dir)
        result = gate(baseline, run, portable=args.portable, threshold=args.threshold, alpha=args.alpha,
                      allow_missing=args.allow_missing, noise=noise,
                      **({"ratio_threshold": args.ratio_threshold} if args.ratio_threshold is not None else {}))
        if args.confirm:
            # A suite the first attempt passed was not retried; one it judged is confirmed against it.
            result = confirm(result, first.get(result.baseline, {"findings": []}))
        table = result.table()
        shown = table if args.all else table[table["outcome"] != "unchanged"]
        if len(shown):
            print(shown.to_markdown(index=False, floatfmt=".4g"))
        print(result.summary(), flush=True)
        results.append(result)
    # Any failure outranks too-noisy, which outranks a pass.
    worst = max((r.exit_code for r in results), key=lambda code: (code == EXIT_FAIL, code))
    if args.findings:
        from .store import write_whole

        findings = {"exit_code": worst, "results": {r.baseline: r.to_json() for r in results}}
        write_whole(args.findings, json.dumps(findings, indent=1, default=str))
    return worst


def _read_findings(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data["results"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"--confirm {path}: not a findings file written by ssmbench gate --findings ({exc})") from None


def cmd_baseline(args) -> int:
    from .baselines import save_baseline

    for spec in args.runs:
        print(f"baseline saved: {save_baseline(spec, args.results_dir, args.baselines)}")
    return 0


def cmd_export(args) -> int:
    from .pytest_benchmark import export_run

    print(export_run(args.run, args.out, args.results_dir))
    return 0


def cmd_tables(args) -> int:
    from .report import write_paper_tables

    text, folder = write_paper_tables(args.runs or None, results_dir=args.results_dir, out_dir=args.reports_dir)
    print(text)
    print(f"written to {folder}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssmbench", description=__doc__)
    parser.add_argument("--results-dir", type=Path, default=None,
                        help="where runs are stored (default: $SSMBENCH_RESULTS or ./results)")
    parser.add_argument("--reports-dir", type=Path, default=Path("reports"), help="where reports are written")
    parser.add_argument("--thp", choices=["on", "off"],
                        help="torch's CPU allocator on transparent huge pages (THP_MEM_ALLOC_ENABLE) in the "
                             "workers; recorded in the environment fingerprint. Default: as the environment says")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="every op x backend, with its status and reasons")
    p.add_argument("--op")
    p.add_argument("--device", choices=["cpu", "cuda"], help="also check support for this device")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("compare", help="check and time backends of one op on one problem")
    p.add_argument("--op", required=True)
    p.add_argument("--backends", help="comma-separated names (default: all)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32")
    p.add_argument("--shape", type=_shape, default={},
                   help="problem fields, e.g. batch=1,dim=1536,dstate=16,seqlen=4096")
    p.add_argument("--threads", type=_positive(int), help="torch threads (recorded)")
    p.add_argument("--budget", type=_positive(float), default=2.0, help="seconds of timing per backend")
    p.add_argument("--timeout", type=_positive(float), default=600.0, help="seconds before a backend's case is killed")
    p.add_argument("--interleave", action="store_true",
                   help="time the backends in rounds A B A B ... in one process (less drift between them)")
    p.add_argument("--stability", action="store_true",
                   help="interleave, and time the first backend twice to show this machine's noise floor")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("run", help="run a suite preset, or finish an interrupted run")
    p.add_argument("--suite", help="suite name, or several separated by commas (one run each)")
    p.add_argument("--preset")
    p.add_argument("--backends", help="only these backends (comma-separated)")
    p.add_argument("--ops", help="only the cases of these ops (comma-separated)")
    p.add_argument("--model", action="append", metavar="PATH_OR_ID",
                   help="also run this checkpoint (a folder or Hugging Face hub id) beside the preset's "
                        "random-weight models, in the suites that build models; repeatable")
    p.add_argument("--resume", metavar="RUN", help="run folder, run id or 'latest' to finish")
    p.add_argument("--threads", type=_positive(int))
    p.add_argument("--report", action="store_true", help="write the report when done")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--executor", choices=["local", "ray", "submitit"], default="local",
                   help="where the cases run: a local worker (default), a Ray cluster, or SLURM jobs via submitit; "
                        "rows come back into one run folder either way")
    p.add_argument("--streams", type=_positive(int),
                   help="ray/submitit: how many case streams (tasks or array jobs) run at once")
    p.add_argument("--ray-address", help="ray: the cluster's address (default $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--cluster", choices=["slurm", "local"], default="slurm",
                   help="submitit: SLURM, or local processes to try a setup out")
    p.add_argument("--slurm-partition", help="submitit: the partition to submit to")
    p.add_argument("--timeout-min", type=_positive(int), help="submitit: each job's time limit in minutes")
    p.add_argument("--gpus-per-node", type=_positive(int), help="submitit: GPUs per job")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("tables", help="regenerate the papers' tables, the paper's value beside ours")
    p.add_argument("runs", nargs="*", help="run folders or ids to compare with (default: each suite's latest)")
    p.set_defaults(func=cmd_tables)

    p = sub.add_parser("report", help="write the report of one or more runs")
    p.add_argument("runs", nargs="*", help="run folders or ids; 'latest' (the default): every run of the latest "
                                           "`ssmbench run` command (one per suite)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("gate", help="fail (exit 1) when a run regresses against a baseline or lacks its cases; "
                                    "exit 3: too noisy to judge")
    p.add_argument("--run", nargs="+", default=["latest"],
                   help="runs to judge: folders, ids, 'latest', 'latest:SUITE', or pytest-benchmark JSON")
    p.add_argument("--baseline", default="auto",
                   help="a run or pytest-benchmark JSON; 'auto': the stored baseline of the run's suite")
    p.add_argument("--baselines", type=Path, default=None, help="baseline store (default results/baselines)")
    p.add_argument("--portable", action="store_true",
                   help="machine-independent figures (ratios, exponents, tables, correctness) for CI")
    p.add_argument("--threshold", type=_positive(float), default=0.10, help="slowdown that counts (default 0.10)")
    p.add_argument("--alpha", type=_positive(float), default=0.01, help="Mann-Whitney U p-value that counts")
    p.add_argument("--ratio-threshold", type=_positive(float), default=None,
                   help="portable mode: worsening of a ratio between our backends that counts (default 0.5)")
    p.add_argument("--all", action="store_true", help="also list unchanged cases")
    p.add_argument("--allow-missing", action="store_true",
                   help="pass a run that lacks cases, figures or claims of the baseline (they are still listed)")
    p.add_argument("--no-noise", action="store_true",
                   help="judge every figure without first measuring this machine's noise")
    p.add_argument("--findings", type=Path, help="write the findings and the exit code here (JSON)")
    p.add_argument("--confirm", type=Path, metavar="FINDINGS",
                   help="a retry: count only regressions that the first attempt's --findings file also had")
    p.set_defaults(func=cmd_gate)

    p = sub.add_parser("baseline", help="record runs as baselines (see README: updating baselines)")
    bsub = p.add_subparsers(dest="action", required=True)
    q = bsub.add_parser("save")
    q.add_argument("runs", nargs="+")
    q.add_argument("--baselines", type=Path, default=None)
    q.set_defaults(func=cmd_baseline)

    p = sub.add_parser("export", help="write a run as pytest-benchmark JSON")
    p.add_argument("run")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_export)
    return parser


def _interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM (a scheduler's stop, `timeout`, `kill`) ends a run as Ctrl-C does: the worker is
    # stopped, finished cases stay stored. It also reaches a job started with SIGINT ignored.
    signal.signal(signal.SIGTERM, _interrupt)
    if args.thp:
        # Read by the allocator when a worker process starts, and by the environment record.
        os.environ["THP_MEM_ALLOC_ENABLE"] = "1" if args.thp == "on" else "0"
    from ..impls.base import BackendError

    try:
        return args.func(args)
    except (ValueError, BackendError) as exc:  # ResultsError and GateRefused are ValueErrors
        print(f"ssmbench {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished cases are stored; finish with: ssmbench run --resume latest",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
