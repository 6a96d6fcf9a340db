"""FID against class accuracy from a run's eval.json (the entries guidance.sh wrote).

    python experiments/guidance_mnist/plot_guidance.py runs/guidance_mnist/mnist_cpu_class \
        experiments/guidance_mnist 500
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

run, out, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
entries = [e for e in json.loads((run / "eval.json").read_text())["entries"].values()
           if e["n"] == n and e.get("guidance_scale") is not None]
if not entries:
    sys.exit(f"{run / 'eval.json'} holds no guided FID with n={n}: run "
             f"RUN={run} N={n} bash experiments/guidance_mnist/guidance.sh first")


def by_scale(point: tuple[float, dict]) -> float:
    """Sort key: the scale alone (two entries of one scale, e.g. of two checkpoints, stay)."""
    return point[0]


series = {
    "classifier-free, w": sorted(((e["guidance_scale"], e) for e in entries
                                  if e.get("classifier") is None), key=by_scale),
    "classifier on the unconditional model (w=0), s": sorted(
        ((e["classifier_scale"], e) for e in entries
         if e.get("classifier") and e["guidance_scale"] == 0), key=by_scale),
    "classifier on the conditional model (w=1), s": sorted(
        ((e["classifier_scale"], e) for e in entries
         if e.get("classifier") and e["guidance_scale"] == 1), key=by_scale),
}
fig, ax = plt.subplots(figsize=(6, 4.2))
for (label, points), marker in zip(series.items(), "osD", strict=True):
    if not points:
        continue
    xs = [100 * e["class_accuracy"] for _, e in points]
    ys = [e["fid"] for _, e in points]
    ax.plot(xs, ys, marker=marker, label=label)
    for (scale, _), x, y in zip(points, xs, ys, strict=True):
        ax.annotate(f"{scale:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
floor = entries[0]["floor"]
ax.axhline(floor, color="grey", linestyle="--", label=f"data floor ({floor:.1f})")
ax.set(xlabel="class accuracy (%)", ylabel=f"FID (n={n})",
       title=f"mnist_cpu conditional, ddim-{entries[0]['steps']}")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(out / "fid_vs_accuracy.png", dpi=120)
print("| guidance | scale | FID | class accuracy | seconds |")
print("| --- | --- | --- | --- | --- |")
for label, points in series.items():
    for scale, e in points:
        print(f"| {label.rsplit(',', 1)[0]} | {scale:g} | {e['fid']:.1f} | "
              f"{100 * e['class_accuracy']:.1f}% | {e['seconds']:.0f} |")
