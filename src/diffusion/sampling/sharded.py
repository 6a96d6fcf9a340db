"""``DiffusionPipeline.sample_across_ranks``: one draw of ``n`` images shared out among the
ranks of a process group (``torchrun``) in chunks, each chunk's step noise from its own seeded
stream (``chunk_seed``), so the images depend on the chunk size and not on the number of
processes. The trainer's periodic FID, ``diffusion.sample``, ``diffusion.evaluate`` and
``diffusion.reflow`` draw through it."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from diffusion.runtime import distributed as dist
from diffusion.sampling.arguments import DEFAULT, SamplerArg
from diffusion.sampling.checks import check_labels
from diffusion.sampling.guidance import Guidance
from diffusion.sampling.images import PipelineOutput

NoiseFn = Callable[[int, int], torch.Tensor]  # (start, size) -> x_T of that chunk


class ShardedSampling:
    """Mixed into ``DiffusionPipeline``, whose ``__call__``, ``_plan``, ``_build``,
    ``_chain_timesteps`` and ``num_classes`` it uses."""

    @torch.no_grad()
    def sample_across_ranks(self, n: int, *, noise: torch.Tensor | NoiseFn, seed: int,
                            chunk_size: int = 256, steps: int | None = None,
                            sampler: SamplerArg = None, eta: float | None = None,
                            timestep_spacing: str | None = DEFAULT,
                            y: torch.Tensor | None = None,
                            transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                            return_chain: bool = False, chain_frames: int = 20,
                            progress: bool = False, desc: str = "sampling",
                            guidance: Guidance | None = None,
                            low_res: torch.Tensor | None = None,
                            low_res_level: float | None = None,
                            control: torch.Tensor | None = None,
                            control_scale: float | None = None) -> PipelineOutput:
        """Draw ``n`` samples in chunks of ``chunk_size``, the chunks shared out among the
        ranks of the process group (``torchrun``); every rank gets the whole result, in order.

        ``noise`` is x_T for all ``n``, or ``noise(start, size)`` giving a chunk's x_T; the
        callable is called for every chunk in order on every rank (so it may read one seeded
        stream), and only the chunks a rank owns are denoised. The per-step noise of stochastic
        samplers comes from a generator seeded by (``seed``, chunk index). So the images depend
        on ``chunk_size`` but not on the number of processes. ``transform`` maps each chunk on
        the rank that drew it (to FID features, say) before the gather. ``y`` as for
        ``__call__``: the default labels run 0..K-1 over all ``n``, not per chunk; ``sampler``,
        ``steps``, ``eta``, ``timestep_spacing``, ``guidance``, ``low_res`` (all ``n``, sliced
        per chunk) and ``low_res_level`` as for ``__call__``. The images are tensors
        (``output_type="pt"``).
        """
        plan, steps = self._plan(n, steps, sampler, eta, timestep_spacing, chunk_size,
                                 return_chain, chain_frames)
        y = check_labels(y, n, (guidance or Guidance()).label_classes(self.num_classes))
        if not callable(noise) and noise.shape[0] != n:
            raise ValueError(f"noise has {noise.shape[0]} samples but n={n}.")
        rank, world = dist.rank(), dist.world_size()
        starts = list(range(0, n, chunk_size))
        mine = starts[rank::world]
        local: dict[int, tuple] = {}
        with tqdm(total=sum(min(chunk_size, n - s) for s in mine), desc=desc, unit="img",
                  disable=not progress or not dist.is_main(), dynamic_ncols=True) as bar:
            for index, start in enumerate(starts):
                b = min(chunk_size, n - start)
                x_t = noise(start, b) if callable(noise) else noise[start:start + b]
                if index % world != rank:
                    continue
                out = self(b, steps=steps, sampler=plan, noise=x_t,
                           generator=torch.Generator().manual_seed(chunk_seed(seed, index)),
                           y=None if y is None else y[start:start + b], batch_size=b,
                           return_chain=return_chain, chain_frames=chain_frames,
                           guidance=guidance, low_res_level=low_res_level,
                           low_res=None if low_res is None else low_res[start:start + b],
                           control=None if control is None else control[start:start + b],
                           control_scale=control_scale)
                images = out.images if transform is None else transform(out.images)
                local[start] = (images, out.chain)
                bar.update(b)
        merged = {k: v for part in dist.all_gather_object(local) for k, v in part.items()}
        ordered = [merged[s] for s in starts]
        chains = [c for _, c in ordered if c is not None]
        return PipelineOutput(
            images=torch.cat([images for images, _ in ordered]),
            chain=torch.cat(chains) if chains else None,
            chain_timesteps=(self._chain_timesteps(self._build(plan, steps), chain_frames)
                             if return_chain else None))


def chunk_seed(seed: int, chunk: int) -> int:
    """The seed of chunk ``chunk``'s per-step noise: distinct streams for every (seed, chunk)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{chunk}".encode()).digest()[:8], "little") >> 1
