"""Tables (printed as Markdown) and figures from the results.json that measure.py wrote.

    python experiments/editing_mnist/report.py experiments/editing_mnist

Also writes them to ``tables.md`` in that folder.
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

folder = Path(sys.argv[1])
results = json.loads((folder / "results.json").read_text())
lines: list[str] = []


def emit(line: str = "") -> None:
    """A line of the tables: printed, and kept for tables.md."""
    lines.append(line)
    print(line)


if "inpainting" in results:
    emit("| mask | method | steps | jumps (length x n) | NFE | FID | KID | known max error "
          "| seconds |")
    emit("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results["inpainting"]:
        jumps = f"{r['jump_length']} x {r['jump_n_sample']}" if r["method"] == "repaint" \
            else "none"
        emit(f"| {r['mask']} | {r['method']} | {r['steps']} | {jumps} | {r['nfe']} | "
              f"{r['fid']:.2f} | {r['kid']:.4f} | {r['known_max_error']:.1e} | "
              f"{r['seconds']:.0f} |")
    first = results["inpainting"][0]
    emit(f"\nn={first['n']}, eta={first['eta']}; data floor {first['floor']:.2f}; the "
          f"{first['n']} unedited test images: FID {results['real_test_images_fid']:.2f}\n")

if "inversion" in results:
    rows = results["inversion"]
    emit("| DDIM steps | fixed-point iterations | NFE | MSE mean | MSE median | MSE max | "
          "feature distance |")
    emit("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        emit(f"| {r['steps']} | {r['fixed_point']} | {r['nfe']} | {r['mse_mean']:.2e} | "
              f"{r['mse_median']:.2e} | {r['mse_max']:.2e} | {r['feature_distance']:.3f} |")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for k in sorted({r["fixed_point"] for r in rows}):
        pts = sorted((r["steps"], r["mse_mean"], r["feature_distance"]) for r in rows
                     if r["fixed_point"] == k)
        label = "plain" if k == 0 else f"{k} fixed-point iterations"
        axes[0].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        axes[1].plot([p[0] for p in pts], [p[2] for p in pts], marker="o", label=label)
    axes[0].axhline(1e-3, color="grey", linestyle="--", label="target 1e-3")
    axes[0].set(xscale="log", yscale="log", xlabel="DDIM steps",
                ylabel="reconstruction MSE ([-1, 1] units)")
    axes[1].set(xscale="log", yscale="log", xlabel="DDIM steps",
                ylabel="feature distance (/ random pairs)")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.suptitle("DDIM inversion then DDIM regeneration, MNIST test images")
    fig.tight_layout()
    fig.savefig(folder / "inversion_vs_steps.png", dpi=110)
    emit()

if "img2img" in results:
    emit("| strength | steps run (of 50) | MSE to the input | class kept | FID |")
    emit("| --- | --- | --- | --- | --- |")
    for r in results["img2img"]:
        emit(f"| {r['strength']} | {r['steps_run']} | {r['mse_to_input']:.3f} | "
              f"{100 * r['class_kept']:.0f}% | {r['fid']:.2f} |")

(folder / "tables.md").write_text("\n".join(lines) + "\n")
