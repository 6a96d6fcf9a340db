"""The tables of experiments/formulations_mnist/README.md from the runs' records: the best FID
at each NFE over the samplers evaluated (each run's eval.json), every sampler's FID, and the
straightness of the flow runs (the reflow's straightness.json).

    python experiments/formulations_mnist/table.py [runs/formulations_mnist] [ddpm run]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from diffusion.reporting.figures import network_evaluations

NFES = (1, 2, 4, 10, 20, 50)


def runs(root: Path, ddpm: Path) -> dict[str, Path]:
    return {"DDPM, `objective=v_minsnr`": ddpm, "EDM, `objective=edm`": root / "edm" / "0",
            "flow matching, uniform t": root / "flow" / "0",
            "flow matching, logit-normal t": root / "flow_ln" / "0",
            "rectified flow (1 reflow of the uniform-t run)": root / "flow" / "0-reflow"}


def entries(run: Path, n: int = 1000) -> list[dict]:
    """The run's FID entries at ``n`` images for its newest checkpoint, each with its NFE."""
    path = run / "eval.json"
    if not path.is_file():
        return []
    found = [e for e in json.loads(path.read_text())["entries"].values() if e["n"] == n]
    newest = max((e["step"] for e in found), default=None)
    out = []
    for e in found:
        if e["step"] != newest or e.get("guidance_scale") is not None:
            continue
        nfe = e.get("nfe") or network_evaluations(e["sampler"], e["steps"],
                                                  e.get("sampler_options"))
        spacing = (e.get("sampler_options") or {}).get("spacing")
        name = e["sampler"] + (f" ({spacing})" if spacing and spacing != "linear"
                               and e["sampler"] != "flow_dpmpp_2m" else "")
        out.append({**e, "nfe": nfe, "name": name})
    return out


def main(root: Path, ddpm: Path) -> None:
    found = {label: entries(run) for label, run in runs(root, ddpm).items()}
    print("| run | " + " | ".join(f"NFE {k}" for k in NFES) + " |")
    print("| --- |" + " --- |" * len(NFES))
    for label, rows in found.items():
        cells = []
        for k in NFES:
            at = [e for e in rows if e["nfe"] == k]
            best = min(at, key=lambda e: e["fid"]) if at else None
            cells.append(f"{best['fid']:.1f} ({best['name']})" if best else "-")
        print(f"| {label} | " + " | ".join(cells) + " |")
    floors = {round(e["floor"], 2) for rows in found.values() for e in rows}
    print(f"\nFloor (n = 1,000 against the test set): {', '.join(map(str, sorted(floors)))}\n")
    print("| run | sampler | steps | NFE | FID | seconds |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, rows in found.items():
        for e in sorted(rows, key=lambda e: (e["name"], e["nfe"])):
            print(f"| {label} | {e['name']} | {e['steps']} | {e['nfe']:g} | {e['fid']:.1f} | "
                  f"{e['seconds']:.0f} |")
    record = root / "flow" / "0-reflow" / "straightness.json"
    if record.is_file():
        s = json.loads(record.read_text())
        pairs = s["pairs"]
        print(f"\nPairs: {pairs['n']} with {pairs['sampler']}-{pairs['steps']} "
              f"({pairs['nfe']} NFE), {pairs['seconds']:.0f} s.")
        for when in ("before", "after"):
            if s.get(when):
                v = s[when]
                print(f"Straightness {when}: {v['value']:.4f} +- {v['stderr']:.4f} "
                      f"(n={v['n']}, {v['steps']} Euler steps)")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(Path(args[0]) if args else Path("runs/formulations_mnist"),
         Path(args[1]) if len(args) > 1 else Path("runs/score_sde_mnist/ddpm_v_minsnr/0"))
