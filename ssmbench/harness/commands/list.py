"""ssmbench list: every op x backend, with its status and the reasons it cannot run."""
from __future__ import annotations


def run(args) -> int:
    from tabulate import tabulate

    from ...impls import OP_NAMES, backends, get_op, reasons

    rows = []
    for op in [args.op] if args.op else OP_NAMES:
        problem = get_op(op).default_problem.replace(device=args.device) if args.device else None
        for backend in backends(op).values():
            status, why = reasons(backend, problem)
            # A declared backward is checked against autograd through the reference like the forward.
            rows.append([op, backend.name, backend.kind, "/".join(backend.devices),
                         "yes" if backend.has_backward else "no", status, "; ".join(why) or backend.description])
    print(tabulate(rows, headers=["op", "backend", "kind", "devices", "backward", "status", "reason / description"],
                   maxcolwidths=[None, None, None, None, None, None, 70]))
    return 0


def add(sub) -> None:
    p = sub.add_parser("list", help="every op x backend, with its status and reasons")
    p.add_argument("--op")
    p.add_argument("--device", choices=["cpu", "cuda"], help="also check support for this device")
    p.set_defaults(func=run)
