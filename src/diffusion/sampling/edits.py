"""The editing methods of ``DiffusionPipeline`` (``img2img``, ``inpaint``, ``invert``,
``regenerate``, ``interpolate``): each takes PIL images, numpy arrays or tensors, checks them
against the model's image shape, runs ``diffusion.editing`` and returns a ``PipelineOutput``
as sampling does."""

from __future__ import annotations

from typing import Any

import torch

from diffusion import editing
from diffusion.errors import ConfigError
from diffusion.sampling.arguments import (
    DEFAULT,
    SamplerArg,
    finish,
    resolve_steps,
    seeded,
)
from diffusion.sampling.images import PipelineOutput, check_output_type, to_output
from diffusion.schedulers.noise import Generators


class EditingMethods:
    """Mixed into ``DiffusionPipeline``, whose ``image_shape``, ``_plan``, ``_build`` and
    ``_steps`` they use. A latent run's edits take and return images: they are encoded to
    its latents, edited there and decoded (inpainting's mask at the latents' resolution, the
    kept pixels pasted back); ``invert``'s ``latents`` are then its x_T in the latent space."""

    def _check_editable(self) -> None:
        """A cascade's super-resolution stage draws only from a low-resolution input; the
        edits noise images with Gaussian noise, which a corrupt-and-denoise run never saw."""
        if getattr(self, "low_res", None) is not None:
            raise ConfigError("this run is a cascade's super-resolution stage, which draws "
                              "from a low-resolution input: edit the cascade's base run.")
        if not getattr(self.scheduler, "gaussian", True):
            raise ConfigError("the edits noise images with Gaussian noise and this run's noise "
                              "is uniform (objective=corrupt): edit a run of another objective.")

    def img2img(self, images: Any, strength: float = 0.6, steps: int | None = None, *,
                sampler: SamplerArg = None, eta: float | None = None,
                timestep_spacing: str | None = DEFAULT, generator: Generators = None,
                num_inference_steps: int | None = None, seed: int | None = None,
                output_type: str = "pt", return_dict: bool = True,
                **options) -> PipelineOutput | tuple:
        """SDEdit: ``images`` noised to the level ``strength`` selects and denoised from there
        with ``sampler`` (as for ``__call__``: None is the pipeline's, with its steps), the
        last ``strength * steps`` of ``steps``. ``images``: PIL images (one or a list), numpy
        (N, H, W, C) in [0, 1] or tensors (N, C, H, W) in [-1, 1], at the model's size;
        ``generator`` as for ``__call__``; ``options`` (``noise``, ``y``, ``batch_size``) as
        ``diffusion.editing.img2img`` takes them. Returns the edited images."""
        self._check_editable()
        images = editing.check_images(images, self.image_shape)
        plan, steps = self._plan(len(images), resolve_steps(steps, num_inference_steps),
                                 sampler, eta, timestep_spacing)
        editing.check_discrete(getattr(plan, "name", plan))
        generator = seeded(generator, seed, len(images))
        check_output_type(output_type, self.image_shape[0])
        out = editing.img2img(self, images, strength=strength, steps=steps,
                              sampler=self._build(plan, steps), generator=generator, **options)
        return finish(PipelineOutput(images=to_output(out, output_type)), return_dict)

    def inpaint(self, images: Any, mask: Any, steps: int | None = None, jump_length: int = 10,
                jump_n_sample: int = 10, *, generator: Generators = None,
                num_inference_steps: int | None = None, seed: int | None = None,
                output_type: str = "pt", return_dict: bool = True,
                **options) -> PipelineOutput | tuple:
        """RePaint: the pixels where ``mask`` is 1 (white in a PIL mask) filled in, in
        ``steps`` steps (None: ``pipe.default_steps``; diffusers' RePaint takes 250);
        ``jump_n_sample=1`` is the plain mode without jumps. ``images`` as for ``img2img``;
        ``mask``: a PIL image (or one per image), a numpy (H, W) array or a tensor (H, W),
        (N, 1, H, W), values in [0, 1]. ``options`` (``eta``, ``timestep_spacing``, ``noise``,
        ``y``, ``batch_size``) as ``diffusion.editing.inpaint`` takes them."""
        self._check_editable()
        images = editing.check_images(images, self.image_shape)
        steps = self._steps(resolve_steps(steps, num_inference_steps))
        generator = seeded(generator, seed, len(images))
        check_output_type(output_type, self.image_shape[0])
        out = editing.inpaint(self, images, mask, steps=steps, jump_length=jump_length,
                              jump_n_sample=jump_n_sample, generator=generator, **options)
        return finish(PipelineOutput(images=to_output(out, output_type)), return_dict)

    def invert(self, images: Any, steps: int | None = None, *,
               num_inference_steps: int | None = None, output_type: str = "pt",
               return_dict: bool = True, **options) -> PipelineOutput | tuple:
        """DDIM inversion: ``latents``, the x_T (N, C, H, W) tensor from which
        ``regenerate(latents, steps)`` (DDIM without clipping) gives back ``images``; the
        output's ``images`` are the inverted images themselves, in ``output_type``
        (``return_dict=False``: ``(images, latents)``). ``images`` as for ``img2img``;
        ``options`` (``fixed_point``, ``timestep_spacing``, ``y``, ``batch_size``) as
        ``diffusion.editing.invert`` takes them."""
        self._check_editable()
        images = editing.check_images(images, self.image_shape)
        steps = self._steps(resolve_steps(steps, num_inference_steps))
        check_output_type(output_type, self.image_shape[0])
        x_T = editing.invert(self, images, steps=steps, **options)
        return finish(PipelineOutput(images=to_output(images, output_type), latents=x_T),
                      return_dict)

    def regenerate(self, latents: torch.Tensor | PipelineOutput, steps: int | None = None, *,
                   num_inference_steps: int | None = None, output_type: str = "pt",
                   return_dict: bool = True, **options) -> PipelineOutput | tuple:
        """The images back from ``invert``'s x_T (``latents``, or its whole output):
        ``self(len(latents), steps=steps, noise=latents)`` with DDIM without clipping
        (``diffusion.editing.regenerate``; the same ``steps``, spacing and ``y``)."""
        if isinstance(latents, PipelineOutput):
            latents = latents.latents
        steps = self._steps(resolve_steps(steps, num_inference_steps))
        check_output_type(output_type, self.image_shape[0])
        out = editing.regenerate(self, latents, steps=steps, **options)
        return finish(PipelineOutput(images=to_output(out, output_type)), return_dict)

    def interpolate(self, a: torch.Tensor, b: torch.Tensor, n: int, steps: int | None = None,
                    **options) -> PipelineOutput | tuple:
        """``n`` images from x_T on the great-circle arc from ``a`` to ``b`` (two x_T, e.g.
        two of ``invert``'s ``latents``), both ends included, decoded as ``regenerate`` does
        unless ``sampler=`` says otherwise; ``options`` (``output_type``, ``return_dict``,
        ``y``, ...) as for ``__call__``."""
        noise = editing.interpolation_noises(a, b, n, self.sample_shape)
        spacing = options.get("timestep_spacing", DEFAULT)
        options.setdefault("sampler", editing.decoder(
            self, "trailing" if spacing is DEFAULT else spacing))
        return self(n, steps=self._steps(resolve_steps(
            steps, options.pop("num_inference_steps", None))), noise=noise, **options)
