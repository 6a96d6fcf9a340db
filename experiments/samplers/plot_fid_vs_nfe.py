"""FID against network evaluations from a run's eval.json (the entries fid_vs_nfe.sh wrote).

    python experiments/samplers/plot_fid_vs_nfe.py runs/samplers/mnist_cpu experiments/samplers [N]

N: the n of the FIDs to plot (fid_vs_nfe.sh's N); default the largest n with trailing spacing.
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

run, out = Path(sys.argv[1]), Path(sys.argv[2])
entries = [e for e in json.loads((run / "eval.json").read_text())["entries"].values()
           if e.get("timestep_spacing") == "trailing"]
n = int(sys.argv[3]) if len(sys.argv) > 3 else max((e["n"] for e in entries), default=0)
entries = [e for e in entries if e["n"] == n]
if not entries:
    sys.exit(f"{run / 'eval.json'} holds no FID with trailing spacing and n={n}: run "
             f"RUN={run} N={n} bash experiments/samplers/fid_vs_nfe.sh first")
lines: dict[str, list[tuple[int, float, float]]] = {}
for e in entries:
    nfe = 2 * e["steps"] - 1 if e["sampler"] == "heun" else e["steps"]
    lines.setdefault(e["sampler"], []).append((nfe, e["fid"], e["seconds"]))
fig, ax = plt.subplots(figsize=(5, 3.5))
for sampler, points in sorted(lines.items()):
    points.sort()
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=sampler)
floor = entries[0]["floor"]
ax.axhline(floor, color="grey", linestyle="--", label=f"data floor ({floor:.1f})")
ax.set(xscale="log", xlabel="network evaluations (NFE)", ylabel=f"FID (n={n})",
       title="mnist_cpu model, trailing spacing")
ax.set_xticks([5, 10, 20, 50], ["5", "10", "20", "50"])
ax.minorticks_off()
ax.legend()
fig.tight_layout()
fig.savefig(out / "fid_vs_nfe.png", dpi=120)
header = lines.get("ddim") or max(lines.values(), key=len)  # heun's NFEs are odd: 9, 19, ...
rows = ["| sampler | " + " | ".join(f"NFE {p[0]}" for p in sorted(header)) + " |"]
for sampler, points in sorted(lines.items()):
    rows.append(f"| {sampler} | " + " | ".join(f"{p[1]:.1f} ({p[0]}, {p[2]:.0f} s)"
                                                for p in sorted(points)) + " |")
print("\n".join(rows))
