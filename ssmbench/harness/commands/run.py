"""ssmbench run: run suite presets (locally, on Ray or through SLURM), or finish an interrupted run."""
from __future__ import annotations

from .options import names, positive, require_cuda


def run(args) -> int:
    from ...impls import OP_NAMES, backends
    from ..executors import from_options
    from ..session import resume_run, start_run

    executor = from_options(args.executor, streams=args.streams, ray_address=args.ray_address, cluster=args.cluster,
                            slurm_partition=args.slurm_partition, timeout_min=args.timeout_min,
                            gpus_per_node=args.gpus_per_node)
    if args.resume:
        summaries = [resume_run(args.resume, results_dir=args.results_dir, threads=args.threads,
                                progress=not args.quiet, executor=executor)]
    else:
        from ...suites import get_suite
        from ..store import new_job_id

        if not args.suite:
            raise ValueError("--suite is required unless --resume names a run")
        suites = [get_suite(name) for name in args.suite.split(",")]  # all names checked first
        ops = names(args.ops, "--ops", OP_NAMES) if args.ops else None
        keep = (names(args.backends, "--backends", {name for op in OP_NAMES for name in backends(op)})
                if args.backends else None)
        summaries = []
        job_id = new_job_id()  # `report latest` reports every run of this command
        for suite in suites:
            preset = args.preset or suite.default_preset
            cases = suite.cases(preset)
            for model in args.model or ():
                if suite.checkpoint_cases is None:
                    from ...suites import available_suites

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
                require_cuda(f"--preset {preset} of suite {suite.name}")
            summaries.append(start_run(f"{suite.name}-{preset}", cases, suite=suite.name, preset=preset,
                                       device=device, results_dir=args.results_dir,
                                       threads=args.threads or suite.threads.get(preset), progress=not args.quiet,
                                       executor=executor, job_id=job_id))
            print(summaries[-1].line(), flush=True)
    if args.resume:
        print(summaries[0].line())
    if args.report:
        from ..report import write_report

        print(f"report: {write_report([s.run_path for s in summaries], out_dir=args.reports_dir)}")
    return 0


def add(sub) -> None:
    p = sub.add_parser("run", help="run a suite preset, or finish an interrupted run")
    p.add_argument("--suite", help="suite name, or several separated by commas (one run each)")
    p.add_argument("--preset")
    p.add_argument("--backends", help="only these backends (comma-separated)")
    p.add_argument("--ops", help="only the cases of these ops (comma-separated)")
    p.add_argument("--model", action="append", metavar="PATH_OR_ID",
                   help="also run this checkpoint (a folder or Hugging Face hub id) beside the preset's "
                        "random-weight models, in the suites that build models; repeatable")
    p.add_argument("--resume", metavar="RUN", help="run folder, run id or 'latest' to finish")
    p.add_argument("--threads", type=positive(int))
    p.add_argument("--report", action="store_true", help="write the report when done")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--executor", choices=["local", "ray", "submitit"], default="local",
                   help="where the cases run: a local worker (default), a Ray cluster, or SLURM jobs via submitit; "
                        "rows come back into one run folder either way")
    p.add_argument("--streams", type=positive(int),
                   help="ray/submitit: how many case streams (tasks or array jobs) run at once")
    p.add_argument("--ray-address", help="ray: the cluster's address (default $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--cluster", choices=["slurm", "local"], default="slurm",
                   help="submitit: SLURM, or local processes to try a setup out")
    p.add_argument("--slurm-partition", help="submitit: the partition to submit to")
    p.add_argument("--timeout-min", type=positive(int), help="submitit: each job's time limit in minutes")
    p.add_argument("--gpus-per-node", type=positive(int), help="submitit: GPUs per job")
    p.set_defaults(func=run)
