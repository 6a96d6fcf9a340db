"""``python -m diffusion.sample run=<run folder> sampler=ddim steps=50 n=64 seed=0``

Writes a PNG grid from the run's EMA weights (and, on request, the tensors and
the denoising chain as a grid and an animated GIF) into ``<run>/samples/``.
``torchrun --nproc_per_node=N -m diffusion.sample ... n=10000 batch_size=500`` shares the
batches out among N processes; the images are the same as from one process.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from diffusion import distributed as dist
from diffusion.cli import CONF_DIR, USER_ERRORS, fail


def sample(cfg: DictConfig) -> dict[str, Path]:
    """Sample as ``cfg`` says; returns the paths written."""
    from diffusion import viz
    from diffusion.pipeline import DiffusionPipeline

    run = Path(cfg.run)
    pipe = DiffusionPipeline.from_run(run, checkpoint=cfg.checkpoint, device=cfg.device,
                                      precision=cfg.precision,
                                      compile=cfg.get("compile", False))
    noise = torch.randn((cfg.n, *pipe.sample_shape),
                        generator=torch.Generator().manual_seed(cfg.seed))
    out = pipe.sample_across_ranks(cfg.n, noise=noise, seed=cfg.seed, chunk_size=cfg.batch_size,
                                   steps=cfg.steps, sampler=cfg.sampler, eta=cfg.eta,
                                   return_chain=cfg.chain, chain_frames=cfg.chain_frames,
                                   progress=True)
    if not dist.is_main():
        return {}
    stem = f"{cfg.sampler}-{cfg.steps}_seed{cfg.seed}"
    grid = Path(cfg.out) if cfg.out else run / "samples" / f"{stem}.png"
    written = {"grid": viz.save_grid(out.images, grid)}
    if cfg.save_tensors:
        written["tensors"] = grid.with_suffix(".pt")
        torch.save(out.images, written["tensors"])
    if cfg.chain:
        rows = out.chain[: cfg.chain_rows]
        written["chain"] = viz.save_chain_grid(rows, grid.with_name(f"{grid.stem}_chain.png"),
                                               timesteps=out.chain_timesteps)
        written["gif"] = viz.save_chain_gif(rows, grid.with_name(f"{grid.stem}_chain.gif"))
    for kind, path in written.items():
        print(f"{kind}: {path}")
    return written


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="sample")
def main(cfg: DictConfig) -> None:
    dist.init_from_env()  # torchrun --nproc_per_node=N shares the batches out among ranks
    try:
        sample(cfg)
    except (*USER_ERRORS, ValueError) as exc:
        fail(exc)
    finally:
        dist.shutdown()


if __name__ == "__main__":
    main()
