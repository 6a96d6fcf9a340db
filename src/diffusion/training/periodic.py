"""The ``Trainer``'s periodic work between steps: the validation loss, the sample grids, the
periodic FID (kept as ``best.pt``), and the checks that stop a run before a bad checkpoint
(replicas that differ, a loss that diverged).

None of it draws from the training streams, so validating, sampling or scoring never
changes what the next step computes.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from diffusion.data.datasets import SampleKey
from diffusion.errors import TrainingError
from diffusion.reporting.pictures import class_blocks, save_labelled_grid
from diffusion.runtime import distributed as dist
from diffusion.runtime.device import autocast
from diffusion.sampling.guidance import Guidance
from diffusion.sampling.pipeline import DiffusionPipeline
from diffusion.training import checkpoint as ckpt


class PeriodicWork:
    """Validation, grids, periodic FID and the stop checks of a ``Trainer``."""

    @torch.no_grad()
    def validation_loss(self) -> float | None:
        """EMA-model loss on the first ``val_batches`` batches of the validation split,
        with the same noise and timesteps every time so values are comparable. It draws
        nothing from the global RNG, so validating never changes the training stream.
        Under DDP every rank takes its slice of each batch (and of the noise drawn for it)."""
        if self.val_set is None:
            return None
        n = min(len(self.val_set), self.cfg.val_batches * self.batch_size)
        loader = DataLoader(torch.utils.data.Subset(self.val_set, range(n)),
                            batch_size=self.batch_size, num_workers=self.num_workers,
                            generator=torch.Generator().manual_seed(self.seed))
        generator = torch.Generator(self.device).manual_seed(self.seed + 1)
        total = torch.zeros(2, device=self.device)  # (sum of losses, images)
        for x0, y in loader:
            x0, y = self._to_device(x0, y)
            noised = self._noised(x0, generator, local=False)
            extra = self._extra_inputs(x0, generator, local=False)
            x_in, t_in, target, t, y, *cond = (
                part.tensor_split(self.world_size)[self.rank] if part is not None else None
                for part in (*noised, y, *extra.values()))
            if x_in.shape[0] == 0:
                continue
            with autocast(self.device, self.precision):
                prediction = self.ema.model(x_in, t_in, y, **dict(zip(extra, cond,
                                                                        strict=True)))
            total[0] += self.objective.loss(prediction, target, t) * x_in.shape[0]
            total[1] += x_in.shape[0]
        loss, count = dist.all_sum(total).tolist()
        return loss / count

    def pipeline(self) -> DiffusionPipeline:
        """Sampling from the EMA weights, compiled and in channels_last when training is
        (built once: the EMA module is updated in place, so a compiled forward is reused)."""
        if self._pipeline is None:
            self._pipeline = DiffusionPipeline(
                self.ema.model, self.scheduler, self.sample_shape, device=self.device,
                precision=self.precision, compile=self.cfg.compile,
                channels_last=self.cfg.channels_last, sampler=self.sampler,
                latent=self.latent, low_res=self.low_res, control=self.control)
        return self._pipeline

    def sample_grid(self) -> Path | None:
        """A grid from the EMA model, starting from the same noise at every call; under DDP
        each rank draws a share and rank 0 writes the grid (None on the other ranks). A
        conditional model's grid has one block of rows per class (the first 16 of more), laid
        out near-square, each block labelled with its class, guided with
        ``sample_guidance_scale``. A header band names the step and the sampler."""
        n, y, columns, scale = self.cfg.sample_n, None, None, None
        if self.conditional:
            y, columns = class_blocks(self.ema.model.num_classes, n,
                                      *self.pipeline().image_shape[1:])
            n = len(y)
            scale = self.cfg.sample_guidance_scale
        steps = self.sampler.step_counts(self.num_train_timesteps)[0]
        low = self._grid_low_res(n)
        control = self._grid_control(n)
        images = self.pipeline().sample_across_ranks(
            n, noise=self.fixed_noise[:n], seed=self.seed, y=y,
            chunk_size=-(-n // self.world_size), steps=steps,
            sampler=self.sampler.build(self.scheduler),
            guidance=Guidance(scale=1.0 if scale is None else scale)
            if self.conditional else None, low_res=low, control=control).images
        if not self.is_main:
            return None
        title = f"step {self.step:,} · {self.sampler.name}-{steps} · EMA" + (
            f" · guidance {scale:g}" if scale is not None else "")
        if low is not None:  # a super-resolution stage: its inputs above what it made of them
            inputs = torch.nn.functional.interpolate(low, size=images.shape[-2:], mode="nearest")
            images = torch.cat([inputs, images])
            columns = columns or max(1, math.ceil(math.sqrt(n)))
            title += (f" · top: validation images at 1/{self.low_res.factor}, bottom: "
                      f"upsampled (level {self.low_res.level:g})")
        if control is not None:  # a ControlNet: the control images above what it made
            images = torch.cat([self.control.preview(control, images.shape[1]).cpu(), images])
            columns = columns or max(1, math.ceil(math.sqrt(n)))
            title += (f" · top: control ({self.control.kind}) of validation images, bottom: "
                      f"generated (scale {self.control.scale:g})")
        return save_labelled_grid(
            images, self.sample_dir / f"step_{self.step:08d}.png",
            columns or max(1, math.ceil(math.sqrt(n))), title=title,
            row_labels=self._class_labels(int(y.max()) + 1) if y is not None else None)

    def _grid_images(self, n: int) -> tuple[torch.Tensor, list[int]]:
        """The first ``n`` validation images (training images where there is no validation
        split, unflipped) and their indices."""
        source = self.val_set if self.val_set is not None else self.train_set
        indices = [i % len(source) for i in range(n)]
        keys = (indices if source is self.val_set
                else [SampleKey(i, self.seed, -1) for i in indices])
        return torch.stack([source[k][0] for k in keys]), indices

    def _grid_control(self, n: int) -> torch.Tensor | None:
        """A ControlNet's grid controls: those of the first ``n`` validation images; None for
        other runs."""
        if self.control is None:
            return None
        images, indices = self._grid_images(n)
        return self.control(images.float(), torch.tensor(indices))

    def _grid_low_res(self, n: int) -> torch.Tensor | None:
        """A super-resolution stage's grid inputs: the first ``n`` validation images (training
        images where there is no validation split, unflipped) at low resolution; None for
        other runs."""
        if self.low_res is None:
            return None
        return self.low_res.downsample(self._grid_images(n)[0].float())

    def _class_labels(self, count: int) -> list[str]:
        """The first ``count`` classes' names as the training set gives them (an image
        folder's class folders, a torchvision dataset's ``classes``), else their indices."""
        names = getattr(self.train_set, "class_names", None)
        return [str(names[k]) if names and k < len(names) else str(k) for k in range(count)]

    def evaluate(self) -> dict:
        """Run the evaluator on the EMA model (every rank: it splits the sampling and hands
        every rank the same result); keep ``best.pt`` when it improves."""
        results = self.evaluator(self.pipeline())
        self.logger.log_metrics({f"eval/{k}": v for k, v in results.items()}, self.step)
        value = results.get(self.cfg.best_metric)
        if value is not None and value < self.best:
            self.best = float(value)
            if self.is_main:
                ckpt.save_atomic(self.state_dict(), self.ckpt_dir / "best.pt")
        return results

    def _check_replicas(self) -> None:
        """Before a checkpoint: every rank must hold rank 0's weights bit for bit."""
        difference = dist.max_param_difference(self.model)
        if difference != 0.0:
            raise TrainingError(
                f"Model replicas differ across ranks by up to {difference:g} at step {self.step}; "
                "rerun with the same code and config on every node.")

    def _check_loss(self, loss: float) -> None:
        """Stop on a non-finite loss, or one ``divergence_factor`` times the median of the
        last ``divergence_window`` logged losses: a run heading to 1e33 is diverged long
        before it overflows, and no checkpoint may be written from that state."""
        history = self._logged_losses
        factor = self.cfg.divergence_factor
        if not math.isfinite(loss):
            raise self._diverged(f"The loss became {loss}")
        if factor and len(history) >= 3:
            median = sorted(history)[len(history) // 2]
            if loss > factor * median:
                raise self._diverged(
                    f"The loss rose to {loss:.4g}, {loss / median:.3g} times its running median "
                    f"{median:.4g},", "; if that rise is expected, raise "
                    "trainer.divergence_factor or set it to 0")
        history.append(loss)
        del history[:-self.cfg.divergence_window]

    def _diverged(self, what: str, otherwise: str = "") -> TrainingError:
        last = ckpt.latest_checkpoint(self.ckpt_dir)
        fix = "lower optimizer.lr, keep trainer.grad_clip on or use trainer.precision=fp32"
        if last is None:
            return TrainingError(f"{what} at step {self.step}, before any checkpoint was "
                                 f"written: {fix}, then start the run again{otherwise}.")
        return TrainingError(
            f"{what} at step {self.step}; the last good checkpoint is {last}: {fix}, then "
            f"resume from it (resume={self.run_dir} optimizer.lr=...){otherwise}.")
