"""`prolific bench stage1|stage2|stage3|render|hashgrid|quality`: speed (and quality) measurements, JSON on stdout.

Progress goes to stderr; the JSON result to stdout and, with --json, to a file. Each stage bench runs the
real training step of its stage with SD-2.1-base-shaped random weights by default (the real model's cost
without the download); `--compare` measures the reference layout and the optimised variants in one process.
"""
from __future__ import annotations

import sys

from ..errors import ProlificError

USAGE = """usage: prolific bench {stage1,stage2,stage3,render,hashgrid,quality} [options]

  stage1   VSD NeRF step (render, encode, prior CFG, estimator, LoRA update, optimizer) at each resolution
  stage2   DMTet geometry step (normal-map SDS) at 512
  stage3   texture step (VSD) at 512
  render   NeRF render + backward per resolution (packed vs dense with --compare)
  hashgrid the hash encoding alone: forward, backward to the table, to table and points
  quality  the toy prior's reconstruction-quality benchmark

Run `prolific bench SUBCOMMAND --help` for its options."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    try:
        if command == "stage1":
            from . import stage1

            stage1.run(rest)
        elif command in ("stage2", "stage3"):
            from . import mesh_stages

            mesh_stages.run(command, rest)
        elif command == "render":
            from . import render

            render.run(rest)
        elif command == "hashgrid":
            from . import hashgrid

            hashgrid.run(rest)
        elif command == "quality":
            from . import quality

            return quality.run(rest)
        else:
            print(f"error: unknown bench '{command}'.\n{USAGE}", file=sys.stderr)
            return 2
    except ProlificError as err:
        print(f"error: {err.message}", file=sys.stderr)
        return 2 if err.code == "bad_request" else 1
    return 0
