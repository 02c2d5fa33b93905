"""ssmbench gate: a run judged against a baseline (exit 1 on a regression or a missing case, 3 too noisy)."""
from __future__ import annotations

import json
from pathlib import Path

from .options import positive


def run(args) -> int:
    from ..baselines import find_baseline
    from ..gate import EXIT_FAIL, confirm, gate
    from ..gate_input import load_input
    from ..noise import measure_noise

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
        from ..store import write_whole

        findings = {"exit_code": worst, "results": {r.baseline: r.to_json() for r in results}}
        write_whole(args.findings, json.dumps(findings, indent=1, default=str))
    return worst


def _read_findings(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data["results"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"--confirm {path}: not a findings file written by ssmbench gate --findings ({exc})") from None


def add(sub) -> None:
    p = sub.add_parser("gate", help="fail (exit 1) when a run regresses against a baseline or lacks its cases; "
                                    "exit 3: too noisy to judge")
    p.add_argument("--run", nargs="+", default=["latest"],
                   help="runs to judge: folders, ids, 'latest', 'latest:SUITE', or pytest-benchmark JSON")
    p.add_argument("--baseline", default="auto",
                   help="a run or pytest-benchmark JSON; 'auto': the stored baseline of the run's suite")
    p.add_argument("--baselines", type=Path, default=None, help="baseline store (default results/baselines)")
    p.add_argument("--portable", action="store_true",
                   help="machine-independent figures (ratios, exponents, tables, correctness) for CI")
    p.add_argument("--threshold", type=positive(float), default=0.10, help="slowdown that counts (default 0.10)")
    p.add_argument("--alpha", type=positive(float), default=0.01, help="Mann-Whitney U p-value that counts")
    p.add_argument("--ratio-threshold", type=positive(float), default=None,
                   help="portable mode: worsening of a ratio between our backends that counts (default 0.5)")
    p.add_argument("--all", action="store_true", help="also list unchanged cases")
    p.add_argument("--allow-missing", action="store_true",
                   help="pass a run that lacks cases, figures or claims of the baseline (they are still listed)")
    p.add_argument("--no-noise", action="store_true",
                   help="judge every figure without first measuring this machine's noise")
    p.add_argument("--findings", type=Path, help="write the findings and the exit code here (JSON)")
    p.add_argument("--confirm", type=Path, metavar="FINDINGS",
                   help="a retry: count only regressions that the first attempt's --findings file also had")
    p.set_defaults(func=run)
