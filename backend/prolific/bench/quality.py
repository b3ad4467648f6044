"""`prolific bench quality`: the command line of the toy prior's quality benchmark (bench/toy_quality.run_quality)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import common


def build_parser() -> argparse.ArgumentParser:
    from .toy_quality import DEFAULT_PROMPTS, DIVERSITY_PROMPT

    parser = argparse.ArgumentParser(prog="prolific bench quality",
                                     description="Generate toy-vocabulary objects and score them against the "
                                                 "true shapes (silhouette/volume IoU, Chamfer, albedo, diversity).")
    parser.add_argument("--model", default=None, help="diffusers folder or id (default: the bundled toy prior)")
    parser.add_argument("--prompts", default=";".join(DEFAULT_PROMPTS), help="semicolon-separated prompts")
    parser.add_argument("--preset", default="draft")
    parser.add_argument("--guidances", default="vsd,sds", help="comma-separated: vsd, sds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--diversity-prompt", default=DIVERSITY_PROMPT, help="empty: skip the diversity study")
    parser.add_argument("--diversity-runs", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("out/bench_quality"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", default=None, metavar="JSON",
                        help='config overrides as JSON, e.g. \'{"nerf": {"steps": 200}}\'')
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    parser.add_argument("--merge", type=Path, nargs="+", default=None, metavar="REPORT",
                        help="run nothing: merge the JSON reports of one benchmark run in parts (e.g. one process "
                             "per prompt) into one report with the summary recomputed")
    return parser


def run(argv: list[str]) -> int:
    from ..errors import BadRequest
    from .toy_quality import run_quality

    args = build_parser().parse_args(argv)
    if args.merge:
        from .toy_quality import merge_reports

        try:
            report = merge_reports([json.loads(path.read_text()) for path in args.merge])
        except (OSError, ValueError, KeyError) as err:
            raise BadRequest(f"Cannot merge the quality reports: {err}") from None
        common.emit(report, args.json)
        return 0
    guidances = tuple(g.strip() for g in args.guidances.split(",") if g.strip())
    if not guidances or any(g not in ("vsd", "sds") for g in guidances):
        raise BadRequest(f"--guidances must list vsd and/or sds, got '{args.guidances}'.")
    try:
        overrides = json.loads(args.set) if args.set else None
    except json.JSONDecodeError as err:
        raise BadRequest(f"--set is not valid JSON: {err}.") from None
    report = run_quality(model=args.model, prompts=[p.strip() for p in args.prompts.split(";") if p.strip()],
                         preset=args.preset, guidances=guidances, seed=args.seed,
                         diversity_prompt=args.diversity_prompt or None, diversity_runs=args.diversity_runs,
                         out_dir=args.out, device=args.device, overrides=overrides, log=common.log)
    common.emit(report, args.json)
    return 0
