"""Model + scheduler -> images. Used by the trainer, ``diffusion.sample``,
``diffusion.evaluate``, ``diffusion.edit`` and notebooks alike, so every path samples the same
way. It takes diffusers' argument names (``num_inference_steps``, ``generator``,
``output_type``, ``return_dict``) beside its own, and every method returns a
``PipelineOutput``:

>>> import torch
>>> from diffusion.pipeline import DiffusionPipeline
>>> pipe = DiffusionPipeline.from_run("runs/mnist/<date>_<time>")  # the run's grid sampler
>>> pipe                                         # model, sampler and steps, shape, device
>>> out = pipe(16, generator=torch.Generator().manual_seed(0))
>>> out.images.shape                             # (16, C, H, W) tensors in [-1, 1]
>>> out.save("samples.png")                      # one grid, whatever the output_type
>>> digits = pipe(4, num_inference_steps=20, output_type="pil").images  # 4 PIL images
>>> edited = pipe.img2img(digits, strength=0.5, output_type="pil").images
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from diffusion.checks import check_int
from diffusion.errors import ConfigError
from diffusion.models.control import ControlImages
from diffusion.models.latent import LatentSpace
from diffusion.models.low_res import LowResConditioning
from diffusion.runs.load import control_images, load_latent_space, load_run
from diffusion.runtime.device import autocast, resolve_device, resolve_precision
from diffusion.sampling.arguments import (
    DEFAULT,
    SamplerArg,
    finish,
    resolve_steps,
    seeded,
)
from diffusion.sampling.checks import (
    check_labels,
    check_sampler,
    check_sampling,
    generator_part,
    is_scheduler,
)
from diffusion.sampling.edits import EditingMethods
from diffusion.sampling.guidance import Guidance
from diffusion.sampling.images import PipelineOutput, check_output_type, save_images, to_output
from diffusion.sampling.sampler import SamplerSpec, make_sampler
from diffusion.sampling.sharded import ShardedSampling, chunk_seed
from diffusion.schedulers import NoiseScheduler
from diffusion.schedulers.base import Generators, randn_tensor

__all__ = ["COMPILE_MODES", "DiffusionPipeline", "PipelineOutput", "chunk_seed", "compile_mode",
           "make_sampler", "save_images"]

FROM_MODEL = object()  # num_classes default: the model's own attribute


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


class DiffusionPipeline(EditingMethods, ShardedSampling):
    """Samples and edits images with a denoising ``model`` over the training ``scheduler``'s
    noise process, with any sampler of ``NoiseScheduler.SAMPLERS``.

    ``sampler`` (a ``SamplerSpec``: name, steps, timestep spacing, options) is what a draw
    runs when none is named: ``from_run`` takes the run's (the sampler of its training
    grids, ``sampler:`` in its ``config.yaml``); built directly, it is DDIM with 50 steps (T
    where the model has fewer), trailing spacing and eta 0 (``SamplerSpec()``). ``steps=None``
    anywhere means its step count (``pipe.default_steps``).

    ``compile`` compiles the model's forward for sampling (``torch.compile``; each chunk
    size compiles once); ``compile="reduce-overhead"`` adds CUDA graphs on a GPU.
    ``latent`` (a ``LatentSpace``: latent diffusion) makes ``sample_shape`` the latents' and
    ``image_shape`` the images': every method decodes what it returns to images, and the edits
    encode what they take (``encode`` / ``decode``); without it the two shapes are one.
    ``low_res`` (a ``LowResConditioning``) makes it a cascade's super-resolution stage: every
    draw takes the ``low_res`` images it upsamples (see ``__call__``).
    ``num_classes`` is the number of class labels the model takes (None: unconditional);
    by default the model's ``num_classes``, which every backbone has. It is read once and
    explicitly, so a wrapper without the attribute is an error here rather than a
    conditional model silently sampled with its untrained null label.

    Every method returns a ``PipelineOutput`` (``return_dict=False``: its fields as a tuple,
    ``(images,)`` for sampling) whose ``images`` are of ``output_type``: ``"pt"`` (default)
    float32 (N, C, H, W) CPU tensors in [-1, 1]; ``"np"`` float32 numpy (N, H, W, C) in
    [0, 1]; ``"pil"`` a list of PIL images. ``output.save("grid.png")`` writes them as one grid.
    """

    def __init__(self, model: nn.Module, scheduler, sample_shape: tuple[int, int, int],
                 device: str | torch.device = "auto", precision: str = "auto",
                 compile: bool | str = False, channels_last: bool = False,
                 num_classes: int | None = FROM_MODEL, sampler: SamplerSpec | None = None,
                 latent: LatentSpace | None = None, low_res: LowResConditioning | None = None,
                 control: ControlImages | None = None):
        if num_classes is FROM_MODEL:
            if not hasattr(model, "num_classes"):
                raise ValueError(f"{type(model).__name__} has no num_classes: pass "
                                 "num_classes= to DiffusionPipeline (None if unconditional).")
            num_classes = model.num_classes
        if num_classes is not None:
            check_int("num_classes", num_classes)
        if sampler is not None and not isinstance(sampler, SamplerSpec):
            raise ConfigError("sampler must be a SamplerSpec (diffusion.sampling.sampler), e.g. "
                              f"SamplerSpec('dpmpp_2m', 20), or None; got {sampler!r}.")
        self.num_classes = num_classes
        self.model = model
        self.scheduler = scheduler
        self.sample_shape = tuple(sample_shape)
        self.latent = latent
        if latent is not None and tuple(latent.shape) != self.sample_shape:
            raise ValueError(f"the model samples {self.sample_shape} but the latent space's "
                             f"latents are {tuple(latent.shape)}: pass the run's own "
                             "autoencoder.")
        self.image_shape = self.sample_shape if latent is None else tuple(latent.image_shape)
        self.low_res = low_res
        self.control = control  # a ControlNet run's ControlImages
        if low_res is not None and latent is not None:
            raise ValueError("a super-resolution stage runs in pixels: pass latent or low_res, "
                             "not both.")
        num_train_timesteps = scheduler.num_train_timesteps
        if sampler is None and not isinstance(scheduler, NoiseScheduler):
            # a continuous-time process: its probability-flow ODE (the velocity's, where the
            # SDE's drift is infinite at t = 1: flow matching)
            zero_terminal = float(scheduler.alpha(scheduler.t_max)) == 0.0
            sampler = SamplerSpec("flow_euler" if zero_terminal else "ode", 50, None)
            if not getattr(scheduler, "gaussian", True):  # the course's sampler, its 10 steps
                sampler = SamplerSpec("corrupt", 10, None)
        if sampler is None:  # DDIM-50 (all T steps where T is smaller)
            sampler = replace(SamplerSpec(), steps=min(SamplerSpec.steps, num_train_timesteps))
        else:
            sampler.one_step_count("a pipeline's default sampler").check(
                num_train_timesteps, scheduler=scheduler)
        self.sampler = sampler
        self.precision_setting = precision
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.to(device)
        self.model.eval()
        self.forward = (torch.compile(self.model, mode=compile_mode(compile), dynamic=False)
                        if compile else self.model)

    @classmethod
    def from_run(cls, run: str | Path, checkpoint: str | Path | None = None,
                 device: str | torch.device = "auto", precision: str = "auto",
                 compile: bool | str = False, channels_last: bool | None = None,
                 sampler: SamplerSpec | None = None):
        """Build from a run folder: its config, the EMA weights of its newest checkpoint, and
        the sampler of its training grids as the default (``sampler``: another spec).
        ``channels_last=None`` follows the run's ``trainer.channels_last``. A folder that is
        not a run, has no checkpoint yet or whose checkpoint does not fit its config raises
        ``RunError`` or ``CheckpointError`` with one sentence saying what to do."""
        model, scheduler, cfg = load_run(run, checkpoint=checkpoint)
        latent = load_latent_space(cfg, run)
        low_res = LowResConditioning(**cfg["low_res"]) if cfg.get("low_res") else None
        control = control_images(cfg)
        channels, size = int(cfg["data"]["channels"]), int(cfg["data"]["image_size"])
        if channels_last is None:
            channels_last = bool((cfg.get("trainer") or {}).get("channels_last", False))
        shape = (channels, size, size) if latent is None else latent.shape
        return cls(model, scheduler, shape, device=device, precision=precision,
                   compile=compile, channels_last=channels_last,
                   sampler=SamplerSpec.of_run(cfg) if sampler is None else sampler,
                   latent=latent, low_res=low_res, control=control)

    # ------------------------------------------------------------------ diffusers' basics
    def to(self, device: str | torch.device) -> DiffusionPipeline:
        """Move the model to ``device`` (``auto``, ``cpu``, ``cuda[:N]``, a ``torch.device``);
        ``precision="auto"`` follows it (bf16 autocast on CUDA and on CPUs with native bf16,
        else fp32). Returns the pipeline, as diffusers' ``to`` does."""
        self.device = resolve_device(device)
        self.precision = resolve_precision(self.precision_setting, self.device)
        self.model.to(self.device, memory_format=self.memory_format)
        if self.latent is not None:
            self.latent.to(self.device)
        return self

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W) in [-1, 1] -> what the model denoises: a latent run's scaled
        latents (the posterior's mean), else the images themselves (CPU float32)."""
        if self.latent is None:
            return images
        return self.latent.encode(images.to(self.device)).float().cpu()

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """What the model denoises -> images in [-1, 1] (``encode``'s inverse), on x's device."""
        return x if self.latent is None else self.latent.decode(x)

    @property
    def default_steps(self) -> int:
        """The step count of ``steps=None``: the default sampler's (all T where it says null)."""
        return self.sampler.step_counts(self.scheduler.num_train_timesteps)[0]

    def __repr__(self) -> str:
        parameters = sum(p.numel() for p in self.model.parameters())
        config = self.scheduler.config
        scheduler = (f"{type(self.scheduler).__name__} ({config['num_train_timesteps']} "
                     f"training steps, {config.get('beta_schedule')} betas, "
                     f"{config.get('prediction_type')})"
                     if isinstance(self.scheduler, NoiseScheduler) else repr(self.scheduler))
        return (f"{type(self).__name__}(\n"
                f"  model={type(self.model).__name__} ({parameters:,} parameters),\n"
                f"  scheduler={scheduler},\n"
                f"  sampler={self.sampler.describe()},\n"
                + (f"  latent={self.latent!r},\n" if self.latent is not None else "")
                + f"  image_shape={self.image_shape}, num_classes={self.num_classes},\n"
                f"  device={self.device}, precision={self.precision})")

    @staticmethod
    def save(images: Any, path: str | Path, nrow: int | None = None) -> Path:
        """``images`` of any ``output_type`` (or a ``PipelineOutput``) as one PNG grid at
        ``path``; ``nrow`` images a row. Returns the path (``save_images``)."""
        return save_images(images, path, nrow=nrow)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def __call__(self, n: int | None = None, steps: int | None = None,
                 sampler: SamplerArg = None, eta: float | None = None,
                 timestep_spacing: str | None = DEFAULT, generator: Generators = None,
                 noise: torch.Tensor | None = None, y: torch.Tensor | None = None,
                 batch_size: int = 256, return_chain: bool = False, chain_frames: int = 20,
                 progress: bool = False, guidance: Guidance | None = None, *,
                 num_inference_steps: int | None = None, seed: int | None = None,
                 output_type: str = "pt", return_dict: bool = True,
                 low_res: torch.Tensor | None = None,
                 low_res_level: float | None = None, control: torch.Tensor | None = None,
                 control_scale: float | None = None) -> PipelineOutput | tuple:
        """Draw ``n`` samples with ``steps`` (alias ``num_inference_steps``) reverse steps.

        ``sampler``: None runs the pipeline's (``pipe.sampler``: its options and spacing, and
        its steps when ``steps`` is None); a name (``"dpmpp_2m"``) that sampler with its
        presets; a ``SamplerSpec`` or a scheduler object as given. ``eta`` (DDIM's) and
        ``timestep_spacing`` (trailing, leading, linspace; None: the training scheduler's)
        override the sampler's; trailing starts at t = T - 1, where x_T ~ N(0, I) is right for
        every schedule (Lin et al. 2024).

        ``noise`` fixes the starting x_T (used for comparable grids across training);
        ``generator`` (or ``seed``) makes the whole draw reproducible; a list of ``n``
        generators draws image i from generator i alone, as diffusers. Batches of
        ``batch_size`` (how many are denoised at once; diffusers' ``batch_size`` is ``n``):
        x_T is drawn for all ``n`` first, so deterministic samplers (DDIM, eta=0) give the
        same images for any batch size; the per-step noise of a stochastic sampler follows
        the batching, unless it comes from a list of generators. ``y``: class labels in
        [0, num_classes - 1] for a conditional model (default 0..K-1 in turn). ``guidance``
        (``diffusion.sampling.guidance``): classifier-free and/or classifier guidance towards
        the labels ``y``. ``output_type``, ``return_dict``: see the class docstring; the
        ``chain`` of ``return_chain`` stays tensors in [-1, 1]. A super-resolution stage
        (``pipe.low_res``) takes ``low_res``, the n images (N, C, H / factor, W / factor) in
        [-1, 1] it upsamples (a base stage's samples), noised to ``low_res_level`` (None: the
        run's ``low_res.level``) with noise drawn from ``generator`` after x_T. A ControlNet
        run (``pipe.control``) takes ``control``, the n control images, at ``control_scale``
        (None: the run's ``control.scale``).
        """
        if n is None:
            raise ConfigError("pass the number of images as n, e.g. pipe(4); batch_size is how "
                              "many are denoised at once, not diffusers' image count.")
        plan, steps = self._plan(n, resolve_steps(steps, num_inference_steps), sampler, eta,
                                 timestep_spacing, batch_size, return_chain, chain_frames)
        generator = seeded(generator, seed, n)
        check_output_type(output_type, self.image_shape[0])
        guidance = guidance or Guidance()
        y = check_labels(y, n, guidance.label_classes(self.num_classes))
        denoiser = guidance.denoiser(self.forward, self.num_classes, self.scheduler, self.device)
        sched = self._build(plan, steps)
        if noise is not None and noise.shape[0] != n:
            raise ValueError(f"noise has {noise.shape[0]} samples but n={n}.")
        if noise is None:  # drawn whole, so x_T does not depend on batch_size
            noise = randn_tensor((n, *self.sample_shape), generator)
        conditioning = self._conditioning(low_res, low_res_level, control, control_scale, n,
                                          generator)
        images, chains = [], []
        starts = range(0, n, batch_size)
        for start in tqdm(starts, desc="sampling", disable=not progress or len(starts) == 1):
            part = slice(start, min(start + batch_size, n))
            x = noise[part].to(self.device).contiguous(memory_format=self.memory_format)
            yb = None if y is None else y[part].to(self.device)
            if conditioning is not None:  # the stage's input for these images
                denoiser = guidance.denoiser(conditioning.forward(self.forward, part, self.device),
                                             self.num_classes, self.scheduler, self.device)
            out, chain = self._denoise(sched, x, yb, generator_part(generator, part),
                                       return_chain, chain_frames, denoiser)
            images.append(self.decode(out.float()).cpu())
            if chain is not None:
                chains.append(chain if self.latent is None else self._decode_chain(chain))
        return finish(PipelineOutput(
            images=to_output(torch.cat(images), output_type),
            chain=torch.cat(chains) if chains else None,
            chain_timesteps=self._chain_timesteps(sched, chain_frames) if return_chain else None,
        ), return_dict)

    # ------------------------------------------------------------------ internals
    def _conditioning(self, low_res, level, control, scale, n: int, generator):
        """A super-resolution stage's inputs (``StageInputs``) or a ControlNet's
        (``ControlInputs``) for a draw of ``n``, checked; None for a run that takes neither
        (refusing any given)."""
        if self.control is not None and low_res is None:
            return self.control.sampling_inputs(control, scale, n, self.image_shape)
        if control is not None:
            raise ConfigError("control= is for a ControlNet run (trained with control=edges|"
                              "blur|mask); this run has none.")
        if self.low_res is None:
            if low_res is not None:
                raise ConfigError("low_res= is for a cascade's super-resolution stage; this "
                                  "run was not trained with conditioning=low_res.")
            return None
        return self.low_res.sampling_inputs(low_res, level, n, self.image_shape, generator)

    def _decode_chain(self, chain: torch.Tensor) -> torch.Tensor:
        """A latent chain (N, F, c, h, w) as images (N, F, C, H, W): every frame decoded."""
        n, frames = chain.shape[:2]
        flat = self.decode(chain.flatten(0, 1).to(self.device)).cpu()
        return flat.reshape(n, frames, *self.image_shape)

    def _steps(self, steps: int | None) -> int:
        """``steps``, None meaning the pipeline's default step count."""
        return self.default_steps if steps is None else steps

    def _resolve(self, sampler: SamplerArg, eta: float | None,
                 timestep_spacing: str | None) -> SamplerSpec | NoiseScheduler:
        """The sampler a draw runs (see ``__call__``): a scheduler object as it is, else a
        spec with ``eta`` and ``timestep_spacing`` where given; a named sampler's steps are
        the pipeline's default."""
        if is_scheduler(sampler):
            return sampler
        if sampler is None:
            base = self.sampler
        elif isinstance(sampler, SamplerSpec):
            base = sampler
        else:
            base = SamplerSpec(check_sampler(sampler), self.default_steps, "trailing", {})
        options = dict(base.options) if eta is None else {**base.options, "eta": eta}
        spacing = base.timestep_spacing if timestep_spacing is DEFAULT else timestep_spacing
        return replace(base, timestep_spacing=spacing, options=options)

    def _plan(self, n, steps, sampler, eta, timestep_spacing, batch_size=None,
              return_chain=False, chain_frames=20) -> tuple[SamplerSpec | NoiseScheduler, int]:
        """(the sampler to run, its steps), every argument of a draw checked before any work:
        ``steps`` None is the sampler spec's own (the default steps for a scheduler object)."""
        plan = self._resolve(sampler, eta, timestep_spacing)
        num_train_timesteps = self.scheduler.num_train_timesteps
        if steps is None:
            steps = (self.default_steps if is_scheduler(plan)
                     else plan.step_counts(num_train_timesteps)[0])
        if is_scheduler(plan):
            check_sampling(plan, steps, 0.0, num_train_timesteps, n=n, batch_size=batch_size)
        else:
            check_sampling(plan.name, steps, plan.eta, num_train_timesteps, n=n,
                           batch_size=batch_size, timestep_spacing=plan.timestep_spacing)
        if return_chain:
            check_int("chain_frames", chain_frames, minimum=2)
        return plan, int(steps)

    def _build(self, plan: SamplerSpec | NoiseScheduler, steps: int) -> NoiseScheduler:
        """The scheduler of a plan, its ``steps`` timesteps set."""
        sched = plan if is_scheduler(plan) else plan.build(self.scheduler)
        if not getattr(self.scheduler, "gaussian", True) and not hasattr(sched, "prior"):
            raise ConfigError(f"this run's noise is uniform (objective=corrupt), which "
                              f"{type(sched).__name__} cannot start from: sample it with "
                              f"sampler=corrupt or flow_euler|flow_heun|flow_midpoint.")
        sched.set_timesteps(steps, device=self.device)
        return sched

    def _sampler(self, sampler: str | NoiseScheduler, steps: int, eta: float,
                 timestep_spacing: str | None = None) -> NoiseScheduler:
        """``make_sampler``'s scheduler over the training one, its ``steps`` timesteps set."""
        return self._build(make_sampler(self.scheduler, sampler, eta, timestep_spacing), steps)

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
        if getattr(sched, "adaptive", False):  # evenly spaced in time, the last the final x_0
            times = torch.linspace(1.0, sched.process.t_min, max(2, frames))[:-1]
            return [round(float(t)) for t in sched.process.model_time(times)] + [-1]
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

    @staticmethod
    def _prior(sched, z: torch.Tensor) -> torch.Tensor:
        """x_T from standard normal ``z``: ``init_noise_sigma`` z, or the sampler's own
        ``prior`` (a process whose noise is not Gaussian)."""
        return sched.prior(z) if hasattr(sched, "prior") else z * sched.init_noise_sigma

    def _denoise(self, sched, x, y, generator, return_chain, chain_frames, denoiser=None):
        """The reverse process from ``x`` (standard normal): diffusers' sampling loop, so
        any scheduler with ``init_noise_sigma``/``scale_model_input``/``step`` runs in it;
        ``denoiser(x_t, t, y)`` is the model's forward, guided or not (None: unguided).
        ``set_timesteps`` first: a multistep or second-order sampler starts each batch afresh."""
        sched.set_timesteps(sched.num_inference_steps, device=self.device)
        denoiser = denoiser or self.forward
        if getattr(sched, "adaptive", False):  # it picks its own steps: hand it the network
            x, chain, _ = sched.solve(lambda x_in, t: self.model_output(x_in, t, y, denoiser),
                                      self._prior(sched, x),
                                      record=max(2, chain_frames) if return_chain else 0)
            return x, (chain.float().cpu() if return_chain else None)
        keep = set(self._chain_positions(sched, chain_frames)) if return_chain else ()
        x = self._prior(sched, x)
        chain = [x.float().cpu()] if 0 in keep else []
        for i, t in enumerate(sched.timesteps):
            model_output = self.model_output(sched.scale_model_input(x, t), t, y, denoiser)
            x = sched.step(model_output, t, x, generator=generator).prev_sample
            if i + 1 in keep:
                chain.append(x.float().cpu())
        return x, (torch.stack(chain, dim=1) if return_chain else None)

