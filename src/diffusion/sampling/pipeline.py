"""Model + scheduler -> images. Used by the trainer, ``diffusion.sample``,
``diffusion.evaluate`` and notebooks alike, so every path samples the same way.

>>> pipe = DiffusionPipeline.from_run("runs/mnist/2026-01-01_12-00-00")
>>> images = pipe(16, steps=50)          # (16, C, H, W) in [-1, 1]
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from diffusion import editing
from diffusion.checks import check_int
from diffusion.errors import ConfigError
from diffusion.runs.load import load_run
from diffusion.runtime import distributed as dist
from diffusion.runtime.device import autocast, resolve_device, resolve_precision
from diffusion.sampling.checks import SAMPLER_PRESETS, SAMPLERS, check_labels, check_sampling
from diffusion.sampling.guidance import Guidance
from diffusion.schedulers import NoiseScheduler

NoiseFn = Callable[[int, int], torch.Tensor]  # (start, size) -> x_T of that chunk
FROM_MODEL = object()  # num_classes default: the model's own attribute


def make_sampler(train_scheduler: NoiseScheduler, sampler: str | NoiseScheduler,
                 eta: float = 0.0, timestep_spacing: str | None = None,
                 **options) -> NoiseScheduler:
    """The scheduler that walks the reverse process: ``sampler`` itself when it is a scheduler
    object, else the class named ``sampler`` over the training noise schedule (its betas,
    prediction type and clipping; only the reverse-step algorithm changes), with the options
    the name presets (``dpmpp_3m``: ``solver_order=3``) updated by ``options``
    (``use_karras_sigmas=True``, say), ``eta`` where that sampler takes one, and
    ``timestep_spacing`` (None: the training scheduler's)."""
    if isinstance(sampler, NoiseScheduler):
        return sampler  # with its own timestep_spacing
    cls, options = SAMPLERS[sampler], {**SAMPLER_PRESETS[sampler], **options}
    if "eta" in cls.config_keys():
        options["eta"] = eta
    if timestep_spacing is not None:
        options["timestep_spacing"] = timestep_spacing
    return cls.over(train_scheduler, **options)


@dataclass
class PipelineOutput:
    images: torch.Tensor                   # (n, C, H, W) in [-1, 1], float32 on the CPU
    chain: torch.Tensor | None = None      # (n, frames, C, H, W): x_t along the reverse process
    chain_timesteps: list[int] | None = None


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_mode(compile: bool | str) -> str | None:
    """``torch.compile``'s mode for a ``compile`` setting: true means the default mode;
    ``reduce-overhead`` replays the fixed-shape denoising step as a CUDA graph."""
    if compile is True:
        return None
    if compile not in COMPILE_MODES:
        raise ConfigError(f"compile must be true, false or one of {', '.join(COMPILE_MODES)}; "
                          f"got {compile!r}.")
    return None if compile == "default" else compile


class DiffusionPipeline:
    """Samples images from a denoising ``model`` with any sampler of ``NoiseScheduler.SAMPLERS``.

    ``compile`` compiles the model's forward for sampling (``torch.compile``; each chunk
    size compiles once); ``compile="reduce-overhead"`` adds CUDA graphs on a GPU.
    ``num_classes`` is the number of class labels the model takes (None: unconditional);
    by default the model's ``num_classes``, which every backbone has. It is read once and
    explicitly, so a wrapper without the attribute is an error here rather than a
    conditional model silently sampled with its untrained null label.
    """

    def __init__(self, model: nn.Module, scheduler, sample_shape: tuple[int, int, int],
                 device: str | torch.device = "auto", precision: str = "auto",
                 compile: bool | str = False, channels_last: bool = False,
                 num_classes: int | None = FROM_MODEL):
        if num_classes is FROM_MODEL:
            if not hasattr(model, "num_classes"):
                raise ValueError(f"{type(model).__name__} has no num_classes: pass "
                                 "num_classes= to DiffusionPipeline (None if unconditional).")
            num_classes = model.num_classes
        if num_classes is not None:
            check_int("num_classes", num_classes)
        self.num_classes = num_classes
        self.model = model
        self.scheduler = scheduler
        self.sample_shape = tuple(sample_shape)
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(self.device, memory_format=self.memory_format).eval()
        self.forward = (torch.compile(self.model, mode=compile_mode(compile), dynamic=False)
                        if compile else self.model)

    @classmethod
    def from_run(cls, run: str | Path, checkpoint: str | Path | None = None,
                 device: str | torch.device = "auto", precision: str = "auto",
                 compile: bool | str = False, channels_last: bool | None = None):
        """Build from a run folder: its config, and the EMA weights of its newest checkpoint.
        ``channels_last=None`` follows the run's ``trainer.channels_last``. A folder that is
        not a run, has no checkpoint yet or whose checkpoint does not fit its config raises
        ``RunError`` or ``CheckpointError`` with one sentence saying what to do."""
        model, scheduler, cfg = load_run(run, checkpoint=checkpoint)
        channels, size = int(cfg["data"]["channels"]), int(cfg["data"]["image_size"])
        if channels_last is None:
            channels_last = bool((cfg.get("trainer") or {}).get("channels_last", False))
        return cls(model, scheduler, (channels, size, size), device=device, precision=precision,
                   compile=compile,
                   channels_last=channels_last)

    @torch.no_grad()
    def __call__(self, n: int, steps: int | None = None,
                 sampler: str | NoiseScheduler = "ddim", eta: float = 0.0,
                 timestep_spacing: str | None = "trailing",
                 generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
                 y: torch.Tensor | None = None, batch_size: int = 256,
                 return_chain: bool = False, chain_frames: int = 20,
                 progress: bool = False, guidance: Guidance | None = None) -> PipelineOutput:
        """Draw ``n`` samples with ``steps`` reverse steps (default: all training steps).

        ``noise`` fixes the starting x_T (used for comparable grids across training);
        ``generator`` makes the whole draw reproducible. Batches of ``batch_size``: x_T is
        drawn for all ``n`` first, so deterministic samplers (DDIM, eta=0) give the same
        images for any batch size; DDPM's per-step noise follows the batching. ``y``: class
        labels in [0, num_classes - 1] for a conditional model (default 0..K-1 in turn).
        ``timestep_spacing`` (trailing, leading, linspace) picks the ``steps`` timesteps
        among the training ones; None keeps the training scheduler's; a scheduler object
        as ``sampler`` keeps its own. Trailing starts at t = T - 1, where x_T ~ N(0, I) is
        right for every schedule (Lin et al. 2024). ``guidance`` (``diffusion.sampling.guidance``):
        classifier-free and/or classifier guidance towards the labels ``y``.
        """
        steps = self._check(n, steps, sampler, eta, batch_size, return_chain, chain_frames,
                            timestep_spacing)
        guidance = guidance or Guidance()
        y = check_labels(y, n, guidance.label_classes(self.num_classes))
        denoiser = guidance.denoiser(self.forward, self.num_classes, self.scheduler, self.device)
        sched = self._sampler(sampler, steps, eta, timestep_spacing)
        if noise is not None and noise.shape[0] != n:
            raise ValueError(f"noise has {noise.shape[0]} samples but n={n}.")
        if noise is None:  # drawn whole, so x_T does not depend on batch_size
            noise = torch.randn((n, *self.sample_shape), generator=generator,
                                device=generator.device if generator is not None else "cpu")
        images, chains = [], []
        starts = range(0, n, batch_size)
        for start in tqdm(starts, desc="sampling", disable=not progress or len(starts) == 1):
            b = min(batch_size, n - start)
            x = noise[start:start + b].to(self.device).contiguous(
                memory_format=self.memory_format)
            yb = None if y is None else y[start:start + b].to(self.device)
            out, chain = self._denoise(sched, x, yb, generator, return_chain, chain_frames,
                                       denoiser)
            images.append(out.float().cpu())
            if chain is not None:
                chains.append(chain)
        return PipelineOutput(
            images=torch.cat(images),
            chain=torch.cat(chains) if chains else None,
            chain_timesteps=self._chain_timesteps(sched, chain_frames) if return_chain else None,
        )

    @torch.no_grad()
    def sample_across_ranks(self, n: int, *, noise: torch.Tensor | NoiseFn, seed: int,
                            chunk_size: int = 256, steps: int | None = None,
                            sampler: str | NoiseScheduler = "ddim", eta: float = 0.0,
                            timestep_spacing: str | None = "trailing",
                            y: torch.Tensor | None = None,
                            transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                            return_chain: bool = False, chain_frames: int = 20,
                            progress: bool = False, desc: str = "sampling",
                            guidance: Guidance | None = None) -> PipelineOutput:
        """Draw ``n`` samples in chunks of ``chunk_size``, the chunks shared out among the
        ranks of the process group (``torchrun``); every rank gets the whole result, in order.

        ``noise`` is x_T for all ``n``, or ``noise(start, size)`` giving a chunk's x_T; the
        callable is called for every chunk in order on every rank (so it may read one seeded
        stream), and only the chunks a rank owns are denoised. The per-step noise of stochastic
        samplers comes from a generator seeded by (``seed``, chunk index). So the images depend
        on ``chunk_size`` but not on the number of processes. ``transform`` maps each chunk on
        the rank that drew it (to FID features, say) before the gather. ``y`` as for
        ``__call__``: the default labels run 0..K-1 over all ``n``, not per chunk; ``guidance``
        as for ``__call__``.
        """
        steps = self._check(n, steps, sampler, eta, chunk_size, return_chain, chain_frames,
                            timestep_spacing)
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
                out = self(b, steps=steps, sampler=sampler, eta=eta,
                           timestep_spacing=timestep_spacing, noise=x_t,
                           generator=torch.Generator().manual_seed(chunk_seed(seed, index)),
                           y=None if y is None else y[start:start + b], batch_size=b,
                           return_chain=return_chain, chain_frames=chain_frames,
                           guidance=guidance)
                images = out.images if transform is None else transform(out.images)
                local[start] = (images, out.chain)
                bar.update(b)
        merged = {k: v for part in dist.all_gather_object(local) for k, v in part.items()}
        ordered = [merged[s] for s in starts]
        chains = [c for _, c in ordered if c is not None]
        return PipelineOutput(
            images=torch.cat([images for images, _ in ordered]),
            chain=torch.cat(chains) if chains else None,
            chain_timesteps=(self._chain_timesteps(
                self._sampler(sampler, steps, eta, timestep_spacing), chain_frames)
                if return_chain else None))

    # ------------------------------------------------------------------ editing
    def img2img(self, images: torch.Tensor, strength: float = 0.6, steps: int = 50,
                **options) -> torch.Tensor:
        """SDEdit: ``images`` noised to the level ``strength`` selects and denoised from there
        (``diffusion.editing.img2img`` has the options)."""
        return editing.img2img(self, images, strength=strength, steps=steps, **options)

    def inpaint(self, images: torch.Tensor, mask: torch.Tensor, steps: int = 250,
                jump_length: int = 10, jump_n_sample: int = 10, **options) -> torch.Tensor:
        """RePaint: the pixels where ``mask`` is 1 filled in; ``jump_n_sample=1`` is the plain
        mode without jumps (``diffusion.editing.inpaint`` has the options)."""
        return editing.inpaint(self, images, mask, steps=steps, jump_length=jump_length,
                               jump_n_sample=jump_n_sample, **options)

    def invert(self, images: torch.Tensor, steps: int = 50, **options) -> torch.Tensor:
        """DDIM inversion: the x_T from which ``regenerate(x_T, steps)`` (DDIM without clipping)
        gives back ``images`` (``diffusion.editing.invert`` has the options)."""
        return editing.invert(self, images, steps=steps, **options)

    def regenerate(self, x_T: torch.Tensor, steps: int = 50, **options) -> torch.Tensor:
        """The images back from ``invert``'s x_T: ``self(len(x_T), steps=steps, noise=x_T)``
        with DDIM without clipping (``diffusion.editing.regenerate``)."""
        return editing.regenerate(self, x_T, steps=steps, **options)

    def interpolate(self, a: torch.Tensor, b: torch.Tensor, n: int, steps: int = 50,
                    **options) -> PipelineOutput:
        """``n`` images from x_T on the great-circle arc from ``a`` to ``b`` (two x_T, or two
        images' ``invert``), both ends included, decoded as ``regenerate`` does unless
        ``sampler=`` says otherwise; ``options`` as for ``__call__``."""
        noise = editing.interpolation_noises(a, b, n, self.sample_shape)
        options.setdefault("sampler", editing.decoder(self, options.get("timestep_spacing",
                                                                         "trailing")))
        return self(n, steps=steps, noise=noise, **options)

    def _check(self, n, steps, sampler, eta, batch_size, return_chain, chain_frames,
               timestep_spacing=None) -> int:
        """Validate a draw's arguments before any work; returns ``steps`` (None: all T)."""
        num_train_timesteps = self.scheduler.config["num_train_timesteps"]
        steps = num_train_timesteps if steps is None else steps
        check_sampling(sampler, steps, eta, num_train_timesteps, n=n, batch_size=batch_size,
                       timestep_spacing=timestep_spacing)
        if return_chain:
            check_int("chain_frames", chain_frames, minimum=2)
        return int(steps)

    def _sampler(self, sampler: str | NoiseScheduler, steps: int, eta: float,
                 timestep_spacing: str | None = None):
        sched = make_sampler(self.scheduler, sampler, eta, timestep_spacing)
        sched.set_timesteps(steps, device=self.device)
        return sched

    @staticmethod
    def _chain_indices(num_steps: int, frames: int) -> list[int]:
        """Which of the chain's num_steps + 1 states are recorded (the first and last always)."""
        frames = max(2, min(frames, num_steps + 1))
        picks = torch.linspace(0, num_steps, frames).round().long().tolist()
        return sorted(set(picks))

    def _chain_positions(self, sched, frames: int) -> list[int]:
        """Loop positions at which x_t is recorded: states of the reverse chain only (not a
        second-order step's midpoint), the first and the last always."""
        states = sched.state_positions
        return [states[i] for i in self._chain_indices(len(states) - 1, frames)]

    def _chain_timesteps(self, sched, frames: int) -> list[int]:
        ts = [round(t) for t in sched.timesteps.tolist()] + [-1]  # -1 marks the final x_0
        return [ts[i] for i in self._chain_positions(sched, frames)]

    def model_output(self, x: torch.Tensor, t: int | torch.Tensor,
                     y: torch.Tensor | None = None, denoiser=None) -> torch.Tensor:
        """The network's float32 output for the batch ``x`` (as the network sees it, i.e.
        after ``scale_model_input``) at one timestep ``t``, with labels ``y``: the one place
        sampling and editing (``diffusion.editing``) ask the model, in the pipeline's precision.
        ``denoiser`` replaces the bare forward (the guided one of
        ``diffusion.sampling.guidance``)."""
        t_batch = t.expand(x.shape[0]) if torch.is_tensor(t) else torch.full(
            (x.shape[0],), int(t), device=self.device)
        with autocast(self.device, self.precision):
            return (denoiser or self.forward)(x, t_batch, y).float()

    def _denoise(self, sched, x, y, generator, return_chain, chain_frames, denoiser=None):
        """The reverse process from ``x`` (standard normal): diffusers' sampling loop, so
        any scheduler with ``init_noise_sigma``/``scale_model_input``/``step`` runs in it;
        ``denoiser(x_t, t, y)`` is the model's forward, guided or not (None: unguided).
        ``set_timesteps`` first: a multistep or second-order sampler starts each batch afresh."""
        sched.set_timesteps(sched.num_inference_steps, device=self.device)
        denoiser = denoiser or self.forward
        keep = set(self._chain_positions(sched, chain_frames)) if return_chain else ()
        x = x * sched.init_noise_sigma
        chain = [x.float().cpu()] if 0 in keep else []
        for i, t in enumerate(sched.timesteps):
            model_output = self.model_output(sched.scale_model_input(x, t), t, y, denoiser)
            x = sched.step(model_output, t, x, generator=generator).prev_sample
            if i + 1 in keep:
                chain.append(x.float().cpu())
        return x, (torch.stack(chain, dim=1) if return_chain else None)


def chunk_seed(seed: int, chunk: int) -> int:
    """The seed of chunk ``chunk``'s per-step noise: distinct streams for every (seed, chunk)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{chunk}".encode()).digest()[:8], "little") >> 1
