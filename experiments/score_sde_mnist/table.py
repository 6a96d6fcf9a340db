"""The tables of experiments/score_sde_mnist/README.md from the runs' records: FID by sampler and
NFE (each run's eval.json) and bits/dim (nll.json).

    python experiments/score_sde_mnist/table.py [runs/score_sde_mnist]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from diffusion.reporting.figures import network_evaluations

RUNS = {"ve": "VE SDE, `objective=dsm`", "vp": "VP SDE, `objective=dsm`",
        "ddpm_v_minsnr": "DDPM, `objective=v_minsnr`",
        "ncsn": "NCSN, `experiment=ncsn_mnist` (10 levels)"}


def entries(run: Path, name: str) -> list[dict]:
    path = run / name
    return list(json.loads(path.read_text())["entries"].values()) if path.is_file() else []


def main(root: Path) -> None:
    print("| run | sampler | NFE | FID | floor |")
    print("| --- | --- | --- | --- | --- |")
    for folder, label in RUNS.items():
        run = root / folder / "0"
        rows = sorted(entries(run, "eval.json"),
                      key=lambda e: (e["sampler"], e["steps"]))
        for e in rows:
            nfe = e.get("nfe") or network_evaluations(e["sampler"], e["steps"],
                                                      e.get("sampler_options"))
            options = "".join(f", {k}={v}" for k, v in (e.get("sampler_options") or {}).items())
            print(f"| {label} | {e['sampler']}-{e['steps']}{options} | {nfe:g} | {e['fid']:.1f} | "
                  f"{e['floor']:.2f} (n={e['n']}) |")
    print()
    print("| run | ODE bits/dim (n, NFE) | variational bound bits/dim |")
    print("| --- | --- | --- |")
    for folder, label in RUNS.items():
        for e in entries(root / folder / "0", "nll.json"):
            vlb = ("-" if e["vlb_bits_per_dim"] is None
                   else f"{e['vlb_bits_per_dim']:.3f} +- {e['vlb_stderr']:.3f}")
            print(f"| {label} | {e['bits_per_dim']:.3f} +- {e['stderr']:.3f} "
                  f"(n={e['n']}, {e['nfe']:.0f}) | {vlb} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/score_sde_mnist"))
