"""Editing with a trained MNIST model: inpainting (RePaint against the plain mode), DDIM
inversion and img2img, measured on the first ``--n`` MNIST test images.

    python experiments/editing_mnist/measure.py --run runs/editing_mnist/mnist_cpu \
        --out experiments/editing_mnist

Writes ``results.json`` (every figure of the README, with the command) and the picture grids
into ``--out``. FID is ``diffusion.evaluate``'s protocol (the domain feature network, the
test split as reference, the data floor of as many training images); the model runs in fp32
(TF32 off on a GPU). Each phase (``--phases``) is written to ``results.json`` as it ends, so a
phase can be rerun alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from functools import partial
from pathlib import Path

import torch
from omegaconf import OmegaConf

from diffusion.config.metrics import build_scorer
from diffusion.config.paths import CONF_DIR
from diffusion.config.runs import run_config
from diffusion.data import build_dataset, to_model_range
from diffusion.editing import make_mask, repaint_nfe
from diffusion.metrics.features import to_uint8
from diffusion.reporting import figures as viz
from diffusion.sampling.pipeline import DiffusionPipeline

# (steps, jump_length, jump_n_sample): RePaint with jumps at 80 NFE, the plain mode (no jumps)
# at the same 80 NFE and on RePaint's own 20-step grid
INPAINT = ((20, 5, 5), (80, 5, 1), (20, 5, 1))
INVERSION_STEPS = (10, 20, 50, 100, 250)
STRENGTHS = (0.2, 0.4, 0.6, 0.8, 1.0)
PHASES = ("inversion", "inpaint_center", "img2img", "inpaint_half")


def timed(work):
    """(result, seconds), the device synchronised on both ends."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    out = work()
    sync()
    return out, time.perf_counter() - start


def inpainting(pipe, scorer, images, kind, args, pictures):
    """FID, known-region error and time of each ``INPAINT`` setting on ``kind`` masks."""
    mask = make_mask(kind, len(images), images.shape[-2:])
    rows, shown = [], [images[:8], (images * (1 - mask))[:8]]
    for steps, jl, jn in INPAINT:
        out, seconds = timed(partial(pipe.inpaint, images, mask, steps=steps, jump_length=jl,
                                     jump_n_sample=jn, eta=args.eta,
                                     generator=torch.Generator().manual_seed(0),
                                     batch_size=args.batch_size))
        out = out.images
        fid = scorer.score(out)
        rows.append({"mask": kind, "eta": args.eta, "method": "repaint" if jn > 1 else "plain",
                     "steps": steps, "jump_length": jl if jn > 1 else None,
                     "jump_n_sample": jn, "nfe": repaint_nfe(steps, jl, jn),
                     "seconds": round(seconds, 1), "fid": fid.fid, "kid": fid.kid,
                     "floor": fid.floor, "n": fid.n,
                     "known_max_error": ((out - images) * (1 - mask)).abs().max().item()})
        print(json.dumps(rows[-1]), flush=True)
        shown.append(out[:8])
    pictures[f"inpaint_{kind}"] = torch.cat(shown)
    return rows


def inversion(pipe, images, features, args, pictures):
    rows, recons = [], []
    f_in = features(images)
    g = torch.Generator().manual_seed(0)
    pairs = torch.randperm(len(images), generator=g)  # the feature scale: random pairs
    scale = (f_in - f_in[pairs]).norm(dim=1)[pairs != torch.arange(len(images))].mean()
    settings = [(steps, 0) for steps in INVERSION_STEPS] + [
        (steps, k) for k in args.fixed_points if k for steps in args.fixed_point_steps]
    for steps, fixed_point in settings:
        x_T, seconds = timed(partial(pipe.invert, images, steps=steps,
                                     fixed_point=fixed_point, batch_size=args.batch_size))
        x_T = x_T.latents
        back = pipe.regenerate(x_T, steps=steps, batch_size=args.batch_size).images
        mse = (back - images).pow(2).flatten(1).mean(1)
        dist = (features(back) - f_in).norm(dim=1) / scale
        rows.append({"steps": steps, "fixed_point": fixed_point,
                     "nfe": steps * (2 + fixed_point), "mse_mean": mse.mean().item(),
                     "mse_median": mse.median().item(), "mse_max": mse.max().item(),
                     "feature_distance": dist.mean().item(),
                     "x_T_std": x_T.std().item(), "invert_seconds": round(seconds, 2)})
        print(json.dumps(rows[-1]), flush=True)
        if fixed_point == 0:
            recons.append(back[:8])
    pictures["inversion"] = torch.cat([images[:8], *recons])
    return rows, scale.item()


def img2img(pipe, scorer, images, labels, classify, args, pictures):
    rows, grids = [], [images[:8]]
    for strength in STRENGTHS:
        out = pipe.img2img(images, strength=strength, steps=50,
                           generator=torch.Generator().manual_seed(0),
                           batch_size=args.batch_size).images
        fid = scorer.score(out)
        rows.append({"strength": strength, "steps_run": int(50 * strength),
                     "mse_to_input": (out - images).pow(2).mean().item(),
                     "class_kept": (classify(out) == labels).float().mean().item(),
                     "fid": fid.fid, "floor": fid.floor, "n": fid.n})
        print(json.dumps(rows[-1]), flush=True)
        grids.append(out[:8])
    pictures["img2img"] = torch.cat(grids)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--phases", nargs="+", default=list(PHASES), choices=PHASES)
    parser.add_argument("--n", type=int, default=500, help="test images per FID")
    parser.add_argument("--n-inversion", type=int, default=100)
    parser.add_argument("--n-img2img", type=int, default=100)
    parser.add_argument("--eta", type=float, default=1.0, help="inpainting's eta (1: DDPM)")
    parser.add_argument("--fixed-points", type=int, nargs="+", default=[3])
    parser.add_argument("--fixed-point-steps", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--batch-size", type=int, default=32,
                        help="images per network call (small batches run faster on one thread)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-root", default=os.environ.get("DIFFUSION_DATA"),
                        help="where MNIST is (default $DIFFUSION_DATA, else the run's data.root)")
    args = parser.parse_args()
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = DiffusionPipeline.from_run(args.run, device=args.device, precision="fp32")
    cfg = run_config(args.run)
    scorer = build_scorer(OmegaConf.load(CONF_DIR / "metrics" / "fid.yaml"), cfg.data,
                          device=pipe.device, root=args.data_root)
    test, labels = build_dataset(cfg.data.name, split=scorer.data.eval_split,
                                 root=scorer.data.root, download=False).preprocessed()
    images, labels = to_model_range(test[: args.n]), labels[: args.n]
    net = scorer.features.net

    def classify(x):
        return net(x.to(pipe.device)).argmax(1).cpu()

    def features(x):
        return scorer.extract(to_uint8(x))

    path = out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results.setdefault("commands", {})
    results.update({"device": str(pipe.device), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "feature_network": scorer.feature_id,
                    "real_test_images_fid": scorer.score(images).fid, "n": args.n})
    for phase in args.phases:
        pictures: dict[str, torch.Tensor] = {}
        if phase == "inversion":
            results["inversion"], results["feature_scale"] = inversion(
                pipe, images[: args.n_inversion], features, args, pictures)
        elif phase.startswith("inpaint_"):
            kind = phase.removeprefix("inpaint_")
            rows = [r for r in results.get("inpainting", []) if r["mask"] != kind]
            results["inpainting"] = rows + inpainting(pipe, scorer, images, kind, args, pictures)
        else:
            k = args.n_img2img
            results["img2img"] = img2img(pipe, scorer, images[:k], labels[:k], classify, args,
                                         pictures)
        results["commands"][phase] = shlex.join(["python", *sys.argv])
        path.write_text(json.dumps(results, indent=1) + "\n")  # after every phase
        for name, grid in pictures.items():
            viz.save_grid(grid, out / f"{name}.png", nrow=8)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
