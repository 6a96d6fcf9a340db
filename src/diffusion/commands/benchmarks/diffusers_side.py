"""What a researcher would run instead: diffusers' ``UNet2DModel`` sized like our network, its
``DDPMPipeline``/``DDIMPipeline`` for sampling, and the training step of diffusers'
``examples/unconditional_image_generation/train_unconditional.py``.

Each other sampler of ``bench.sampler`` is paired with diffusers' scheduler of the same class
name (``DPMSolverMultistepScheduler``, ``EulerDiscreteScheduler``,
``EulerAncestralDiscreteScheduler``, ``HeunDiscreteScheduler``) with the same options and
spacing as ``conf/sampler/<name>.yaml`` gives ours, run in the sampling loop diffusers
documents for a scheduler without a pipeline of its own (``init_noise_sigma``,
``scale_model_input``, ``step``) and finished as its pipelines finish (to [0, 1], on the CPU).

The example's step, with accelerate's parts written out: AdamW (lr 1e-4, betas (0.95, 0.999),
weight decay 1e-6), a cosine LR schedule with 500 warm-up steps, inputs cast to the mixed
precision dtype, the forward under autocast at the same precision, MSE on the noise, gradient
clipping at 1.0, ``EMAModel`` (decay 0.9999, warm-up with inv_gamma 1 and power 3/4) stepped
after every optimizer step, and ``loss.item()`` for its progress bar. Its data path is a
``DataLoader`` over the torchvision dataset with the example's transforms (resize, crop, flip,
``ToTensor``, ``Normalize``). Needs the ``bench`` extra (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import copy
import inspect
import itertools
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

from diffusion.commands.benchmarks.ours import Side, bench_samplers, synthetic_batch
from diffusion.errors import ConfigError
from diffusion.models.diffusers_unet import unet2d_arguments
from diffusion.runtime.device import autocast
from diffusion.sampling.checks import SAMPLERS
from diffusion.sampling.sampler import SamplerSpec
from diffusion.schedulers import NoiseScheduler

TOLERANCE = 0.05
"""How far the diffusers network's parameter count may be from ours (relative)."""

DDPM_CIFAR10 = {
    "sample_size": 32, "in_channels": 3, "out_channels": 3, "layers_per_block": 2,
    "block_out_channels": (128, 256, 256, 256),
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": None, "downsample_padding": 0, "flip_sin_to_cos": False,
    "freq_shift": 1, "norm_eps": 1e-6, "norm_num_groups": 32, "mid_block_scale_factor": 1,
    "center_input_sample": False, "act_fn": "silu", "time_embedding_type": "positional",
}
"""google/ddpm-cifar10-32: the DDPM paper's 35.7M-parameter CIFAR-10 network in diffusers."""

BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear",
                  "cosine": "squaredcos_cap_v2", "sigmoid": "sigmoid"}


def _count(config: Mapping) -> int:
    """Parameters of ``UNet2DModel(**config)``, built on the meta device (no memory, fast)."""
    from diffusers import UNet2DModel

    with torch.device("meta"):
        return sum(p.numel() for p in UNet2DModel(**config).parameters())


def _is_ddpm_cifar10(m: Mapping, channels: int, image_size: int) -> bool:
    return (m["_target_"].endswith("AttentionUNet") and channels == 3 and image_size == 32
            and m["base_channels"] == 128 and tuple(m["channel_mult"]) == (1, 2, 2, 2)
            and m["num_res_blocks"] == 2 and tuple(m.get("attention_resolutions") or ()) == (16,)
            and not m.get("use_scale_shift_norm") and not m.get("resblock_updown"))


def _mapped(m: Mapping, channels: int, image_size: int) -> dict:
    """Our config's structure in diffusers' terms: widths, blocks per level, attention levels
    (``models.diffusers_unet.unet2d_arguments``, what ``model=diffusers_unet`` builds)."""
    return unet2d_arguments(m, channels, image_size)


def _rescaled(config: dict, scale: float, layers: int) -> dict:
    groups = config["norm_num_groups"]
    widths = tuple(max(groups, round(w * scale / groups) * groups)
                   for w in config["block_out_channels"])
    # One head per attention block: the count of heads changes no parameter.
    return {**config, "block_out_channels": widths, "layers_per_block": layers,
            "attention_head_dim": None}


def unet2d_config(model_cfg: Mapping | DictConfig, channels: int, image_size: int,
                  target_params: int) -> tuple[dict, int]:
    """``UNet2DModel`` keyword arguments for the diffusers network closest to ours, and its
    parameter count, which is within ``TOLERANCE`` of ``target_params``.

    The DDPM CIFAR-10 network maps to google/ddpm-cifar10-32's configuration; an attention
    UNet maps level by level (the counts then agree exactly); other backbones keep their
    widths' proportions and get the number of blocks per level and a common width scale that
    land closest. ``sample_size`` is the side our network pads its input to.
    """
    m = OmegaConf.to_container(model_cfg, resolve=True) if isinstance(model_cfg, DictConfig) \
        else dict(model_cfg)
    if _is_ddpm_cifar10(m, channels, image_size):
        config = {**DDPM_CIFAR10, "dropout": float(m.get("dropout") or 0.0)}
        return config, _count(config)
    config = _mapped(m, channels, image_size)
    count = _count(config)
    if abs(count / target_params - 1) <= TOLERANCE:
        return config, count
    best = (abs(count / target_params - 1), config, count)
    for layers in (1, 2, 3):  # params grow monotonically with the width scale: bisect it
        low, high = 0.125, 8.0
        for _ in range(14):
            mid = (low * high) ** 0.5
            candidate = _rescaled(config, mid, layers)
            n = _count(candidate)
            best = min(best, (abs(n / target_params - 1), candidate, n), key=lambda b: b[0])
            low, high = (mid, high) if n < target_params else (low, mid)
    if best[0] > TOLERANCE:
        raise ConfigError(
            f"No diffusers UNet2DModel within {TOLERANCE:.0%} of this model's {target_params:,} "
            f"parameters was found (closest: {best[2]:,}); compare a unet_attn model instead.")
    return best[1], best[2]


def diffusers_scheduler(spec: SamplerSpec, noise_config: Mapping, training_spacing: str):
    """diffusers' scheduler of the class name of our sampler ``spec.name``, over the noise
    schedule ``noise_config`` (a diffusers scheduler's config), with the options and spacing
    ``spec`` gives ours (None: ``training_spacing``); DDIM's eta goes to its step instead."""
    import diffusers

    if not hasattr(diffusers, SAMPLERS[spec.name].__name__):
        raise ConfigError(f"diffusers has no counterpart of sampler={spec.name} to bench it "
                          f"against: choose bench.sampler among "
                          f"{', '.join(sorted(NoiseScheduler.SAMPLERS))}.")
    cls = getattr(diffusers, SAMPLERS[spec.name].__name__)
    # Passed as arguments: from_config leaves some classes' own beta_start/beta_end defaults
    # in place of the config's (HeunDiscreteScheduler gets Stable Diffusion's betas).
    accepted = inspect.signature(cls.__init__).parameters
    process = {k: v for k, v in dict(noise_config).items() if k in accepted}
    options = {k: v for k, v in spec.options.items() if k != "eta"}
    defaults = SAMPLERS[spec.name].config_defaults()
    for key in [k for k in options if k not in accepted]:  # ours only (thresholding on Euler)
        if options.pop(key) != defaults.get(key):
            raise ConfigError(f"diffusers' {cls.__name__} has no option {key}: bench "
                              f"sampler={spec.name} with {key} at its default.")
    return cls(**{**process, "timestep_spacing": spec.timestep_spacing or training_spacing,
                  **options})


class _Transformed(Dataset):
    """A torchvision dataset's (image, label) items through the example's transforms."""

    def __init__(self, source: Dataset, transform, mode: str):
        self.source, self.transform, self.mode = source, transform, mode

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        image, label = self.source[index]
        return self.transform(image.convert(self.mode)), label


def _identity(x):
    return x


def example_transforms(resolution: int, center_crop: bool, random_flip: bool):
    """The augmentations of train_unconditional.py."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.CenterCrop(resolution) if center_crop else transforms.RandomCrop(resolution),
        transforms.RandomHorizontalFlip() if random_flip else transforms.Lambda(_identity),
        transforms.ToTensor(),
        transforms.Normalize([0.5], [0.5]),
    ])


class DiffusersSide(Side):
    """diffusers' network, schedulers, pipelines and example training step."""

    name = "diffusers"

    def __init__(self, cfg: DictConfig, target_params: int, train_set, device: torch.device,
                 precision: str):
        from diffusers import DDIMPipeline, DDPMPipeline, DDPMScheduler, UNet2DModel
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import EMAModel

        self.cfg, self.device, self.precision = cfg, device, precision
        channels, image_size = cfg.data.channels, cfg.data.image_size
        unet_config, count = unet2d_config(cfg.model, channels, image_size, target_params)
        torch.manual_seed(cfg.seed)
        self.model = UNet2DModel(**unet_config).to(device).train()
        self.noise_scheduler = DDPMScheduler(
            num_train_timesteps=cfg.scheduler.num_train_timesteps,
            beta_schedule=BETA_SCHEDULES[cfg.scheduler.beta_schedule],
            prediction_type=cfg.scheduler.prediction_type)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, betas=(0.95, 0.999),
                                           weight_decay=1e-6, eps=1e-8)
        self.lr_scheduler = get_scheduler("cosine", optimizer=self.optimizer,
                                          num_warmup_steps=500,
                                          num_training_steps=cfg.trainer.max_steps)
        self.ema = EMAModel(self.model.parameters(), decay=0.9999, use_ema_warmup=True,
                            inv_gamma=1.0, power=3 / 4, model_cls=UNet2DModel,
                            model_config=self.model.config)
        self.ema.to(device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.weight_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision,
                                                                                torch.float32)
        resolution = unet_config["sample_size"]
        self.shape = (channels, resolution, resolution)
        self._images, _ = synthetic_batch(cfg.data.batch_size, self.shape, None, device,
                                          cfg.seed)
        # Sampling uses the EMA weights in their own copy of the network, as the example does.
        self.sample_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.ema.copy_to(self.sample_model.parameters())
        spacing = cfg.scheduler.get("timestep_spacing", "leading")
        self.samplers = {spec.name: diffusers_scheduler(spec, self.noise_scheduler.config,
                                                        spacing)
                         for spec in bench_samplers(cfg.bench)}
        self.pipelines = {name: pipeline(unet=self.sample_model, scheduler=self.samplers[name])
                          for name, pipeline in (("ddim", DDIMPipeline), ("ddpm", DDPMPipeline))
                          if name in self.samplers}
        for pipe in self.pipelines.values():
            pipe.set_progress_bar_config(disable=True)
        self._eta = {spec.name: spec.eta for spec in bench_samplers(cfg.bench)}
        mode = "RGB" if channels == 3 else "L"
        dataset = _Transformed(train_set.source, example_transforms(
            resolution, cfg.data.center_crop, cfg.data.random_flip), mode)
        self._loader = DataLoader(dataset, batch_size=cfg.data.batch_size, shuffle=True,
                                  num_workers=cfg.data.num_workers)
        self._data = None
        self.logs: dict = {}
        self.info = {
            "model": "UNet2DModel", "optimizer": "AdamW", "optimizer_impl": "default",
            "ema": "EMAModel (per-tensor)", "sample_size": resolution,
            "unet2d_config": {k: list(v) if isinstance(v, tuple) else v
                              for k, v in unet_config.items()},
            "data_path": f"DataLoader, {cfg.data.num_workers} worker(s), torchvision transforms",
        }

    def train_step(self) -> None:
        clean_images = self._images.to(self.weight_dtype)
        noise = torch.randn(clean_images.shape, dtype=self.weight_dtype,
                            device=clean_images.device)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps,
                                  (clean_images.shape[0],), device=clean_images.device).long()
        noisy_images = self.noise_scheduler.add_noise(clean_images, noise, timesteps)
        with autocast(self.device, self.precision):
            model_output = self.model(noisy_images, timesteps).sample
        loss = F.mse_loss(model_output.float(), noise.float())
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.lr_scheduler.step()
        self.optimizer.zero_grad()
        self.ema.step(self.model.parameters())
        self.logs = {"loss": loss.detach().item(), "lr": self.lr_scheduler.get_last_lr()[0],
                     "ema_decay": self.ema.cur_decay_value}

    def sample(self, name: str) -> None:
        bench = self.cfg.bench
        generator = torch.Generator().manual_seed(self.cfg.seed)
        with autocast(self.device, self.precision):
            if name in self.pipelines:
                kwargs = {"eta": self._eta[name]} if name == "ddim" else {}
                self.pipelines[name](batch_size=bench.sample_n,
                                     num_inference_steps=bench.sample_steps,
                                     generator=generator, output_type="np", **kwargs)
            else:
                self._sample_loop(self.samplers[name], bench.sample_n, bench.sample_steps,
                                  generator)

    @torch.no_grad()
    def _sample_loop(self, scheduler, n: int, steps: int, generator: torch.Generator):
        """diffusers' documented loop for a scheduler, finished as its pipelines finish."""
        from diffusers.utils.torch_utils import randn_tensor

        scheduler.set_timesteps(steps, device=self.device)
        x = randn_tensor((n, *self.shape), generator=generator, device=self.device)
        x = x * scheduler.init_noise_sigma
        # Heun's and Euler's steps take no generator (they draw nothing)
        noise = {"generator": generator} if "generator" in inspect.signature(
            scheduler.step).parameters else {}
        for t in scheduler.timesteps:
            out = self.sample_model(scheduler.scale_model_input(x, t), t).sample
            x = scheduler.step(out, t, x, **noise).prev_sample
        return (x / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()

    def next_batch(self) -> None:
        if self._data is None:  # one pass per epoch, as the example loops over epochs
            self._data = itertools.chain.from_iterable(itertools.repeat(self._loader))
        next(self._data)

    def ema_update(self) -> None:
        self.ema.step(self.model.parameters())

    def forward_backward(self) -> None:
        t = torch.randint(0, 1000, (self._images.shape[0],), device=self.device)
        with autocast(self.device, self.precision):
            out = self.model(self._images, t).sample
        out.float().square().mean().backward()
        self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def forward(self) -> None:
        n = self.cfg.bench.sample_n
        x = torch.randn((n, *self.shape), device=self.device)
        with autocast(self.device, self.precision):
            self.sample_model(x, torch.full((n,), 500, device=self.device))

    def close(self) -> None:
        self._data = None
