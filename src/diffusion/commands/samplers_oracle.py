"""Sampler error with the training taken out: every registered sampler driven by an exact model.

The harness (``diffusion.oracle.run``) scores each sampler's samples of Gaussian mixtures,
whose scores are known in closed form, against exact samples:

    OMP_NUM_THREADS=1 python -m diffusion.samplers_oracle --samplers ddim,ddpm \\
        --nfe 5,10,20,50,100,1000 --n 10000 --schedules linear,cosine --out experiments/samplers

writes ``oracle.md`` (tables, floors, command, machine), ``oracle.json`` and ``oracle.png``.
"""

from __future__ import annotations

import argparse
import os
import sys

from diffusion.checks import check_writable
from diffusion.commands.launcher import guarded
from diffusion.oracle.report import write_report
from diffusion.oracle.run import OracleConfig, run_oracle


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _floats(text: str) -> list[float]:
    try:
        return [float(part) for part in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers; got {text!r}.")\
            from None


def _ints(text: str) -> list[int]:
    try:
        return [int(part) for part in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers; got {text!r}.")\
            from None


EXAMPLES = """\
examples:
  python -m diffusion.samplers_oracle --samplers ddim,dpmpp_2m --nfe 5,10,20 --n 2000
  python -m diffusion.samplers_oracle --samplers ddim,ddpm --schedules linear,cosine --n 10000
  python -m diffusion.samplers_oracle --samplers euler,heun --spacings trailing --nfe 10,20

experiments/samplers/README.md has measured tables and how to read them."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after each option, and the examples as written."""


def parse_args(argv: list[str] | None = None) -> tuple[OracleConfig, str]:
    """The command line as an ``OracleConfig`` and the output folder."""
    d = OracleConfig()
    p = argparse.ArgumentParser(prog="python -m diffusion.samplers_oracle",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=_HelpFormatter, epilog=EXAMPLES)
    p.add_argument("--samplers", type=_names, default=d.samplers,
                   help="comma-separated sampler names; the default is every registered one")
    p.add_argument("--nfe", type=_ints, default=d.nfe, help="target model calls per sample")
    p.add_argument("--tolerances", type=_floats, default=d.tolerances,
                   help="rtol = atol of each run of an adaptive sampler (rk45), instead of NFE")
    p.add_argument("--n", type=int, default=d.n, help="samples per sampler run")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--datasets", type=_names, default=d.datasets, help="ring, mix64")
    p.add_argument("--schedules", type=_names, default=d.schedules, help="beta schedules")
    p.add_argument("--spacings", type=_names, default=d.spacings, help="timestep spacings")
    p.add_argument("--prediction-types", type=_names, default=d.prediction_types,
                   help="what the exact model predicts: epsilon, sample, v_prediction")
    p.add_argument("--projections", type=int, default=d.projections,
                   help="random directions of the sliced Wasserstein distance")
    p.add_argument("--floor-repeats", type=int, default=d.floor_repeats,
                   help="exact sample sets averaged into the floor")
    p.add_argument("--clip-sample", action="store_true",
                   help="clip the samplers' x_0 estimates to [-1, 1]")
    p.add_argument("--eta", type=float, default=d.eta, help="for samplers that take one")
    p.add_argument("--out", default="experiments/samplers", help="folder for oracle.md/json/png")
    a = p.parse_args(argv)
    cfg = OracleConfig(samplers=a.samplers, nfe=a.nfe, n=a.n, seed=a.seed, datasets=a.datasets,
                       schedules=a.schedules, spacings=a.spacings,
                       prediction_types=a.prediction_types, projections=a.projections,
                       tolerances=a.tolerances,
                       floor_repeats=a.floor_repeats, clip_sample=a.clip_sample, eta=a.eta)
    return cfg, a.out


def main(argv: list[str] | None = None) -> int:
    """Run the harness the command line asks for and write its report; returns 0. A bad
    option ends the program with ``error: <one sentence>`` and exit status 1, before any
    sampling."""
    cfg, out = parse_args(argv)
    guarded(cfg.check)
    guarded(check_writable, out, "set --out to a writable folder", folder=True,
            what="the report folder")
    load = os.getloadavg if hasattr(os, "getloadavg") else lambda: None
    load_before = load()
    result = run_oracle(cfg)
    result["load_average"] = {"before": load_before, "after": load()}
    for path in write_report(result, out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
