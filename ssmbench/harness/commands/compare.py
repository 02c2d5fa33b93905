"""ssmbench compare: check and time backends of one op on one problem."""
from __future__ import annotations

from .options import positive, require_cuda, shape


def run(args) -> int:
    from ...impls import backends, get_op
    from ...impls.registry import get_backend
    from ..case import Case
    from ..session import start_run

    op = get_op(args.op)
    if args.device == "cuda":
        require_cuda("--device cuda")
    params = {**op.default_problem.params(), **args.shape, "device": args.device, "dtype": args.dtype}
    problem = op.problem_type.from_params(params)  # names a bad key or value before anything runs
    # The float64 reference is the ground truth, and slow: timed only when named.
    names = (args.backends.split(",") if args.backends
             else [n for n, b in backends(args.op).items() if b.kind != "reference"])
    for name in names:
        get_backend(args.op, name)  # an unknown name is refused with the op's known backends
    if args.interleave or args.stability:
        cases = [Case(suite="compare", op=args.op, backends=tuple(names), params=problem.params(),
                      stability=args.stability, budget_s=args.budget, timeout_s=args.timeout * len(names))]
    else:
        cases = [Case(suite="compare", op=args.op, backend=name, params=problem.params(), series=name,
                      budget_s=args.budget, timeout_s=args.timeout)
                 for name in names]
    summary = start_run(f"compare-{args.op}", cases, suite="compare", preset="adhoc", device=args.device,
                        results_dir=args.results_dir, threads=args.threads, progress=not args.quiet)
    from ..report import comparison_table

    print(comparison_table(summary.run_path))
    print(summary.line())
    return 0


def add(sub) -> None:
    p = sub.add_parser("compare", help="check and time backends of one op on one problem")
    p.add_argument("--op", required=True)
    p.add_argument("--backends", help="comma-separated names (default: all)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32")
    p.add_argument("--shape", type=shape, default={},
                   help="problem fields, e.g. batch=1,dim=1536,dstate=16,seqlen=4096")
    p.add_argument("--threads", type=positive(int), help="torch threads (recorded)")
    p.add_argument("--budget", type=positive(float), default=2.0, help="seconds of timing per backend")
    p.add_argument("--timeout", type=positive(float), default=600.0, help="seconds before a backend's case is killed")
    p.add_argument("--interleave", action="store_true",
                   help="time the backends in rounds A B A B ... in one process (less drift between them)")
    p.add_argument("--stability", action="store_true",
                   help="interleave, and time the first backend twice to show this machine's noise floor")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
