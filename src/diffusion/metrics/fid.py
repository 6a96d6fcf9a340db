"""FID and KID with a stated protocol.

The reference is the dataset's evaluation split (``test``); every score carries its protocol:
n generated images, sampler and steps, the feature network's id, the reference split, and
the data floor, the FID of n real *training* images against the same reference, which no
model can beat in expectation at that n. The statistics are torchmetrics'
``FrechetInceptionDistance`` and ``KernelInceptionDistance`` over the feature network.

Reference and floor features are cached per (feature id, dataset, split, n) next to the
feature network, so a repeated evaluation only extracts features of the new samples.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from diffusion.data import build_dataset, dataset_info
from diffusion.metrics.features import CACHE_FIX, cache_root, to_uint8
from diffusion.runtime import distributed as dist
from diffusion.runtime.files import load_cached, save_torch
from diffusion.sampling.checks import balanced_labels
from diffusion.sampling.guidance import Guidance
from diffusion.sampling.sampler import SamplerSpec


def format_score(value: float | None) -> str:
    """157, 12.3, 4.12, 0.83: no scientific notation; a numerically zero FID prints as 0."""
    if value is None or not math.isfinite(value):
        return str(value)
    if abs(value) < 5e-3:
        return "0"
    return f"{value:.{0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2}f}"


@dataclass
class FidResult:
    """One FID (and KID) with everything needed to compare it honestly."""

    fid: float
    floor: float
    n: int
    feature_id: str
    reference: str              # e.g. "mnist/test"
    reference_n: int
    floor_n: int
    sampler: str | None = None  # None for a set of images that was not sampled
    steps: int | None = None
    kid: float | None = None
    kid_std: float | None = None
    features: str | None = None  # what the features are and what the score compares with
    class_accuracy: float | None = None  # share of samples classified as their requested label

    @property
    def label(self) -> str:
        return f"{self.sampler}-{self.steps}" if self.sampler else "images"

    def __str__(self) -> str:
        accuracy = ("" if self.class_accuracy is None
                    else f", class accuracy {100 * self.class_accuracy:.1f}%")
        return (f"FID {format_score(self.fid)} (floor {format_score(self.floor)}, n={self.n}, "
                f"{self.label}, {self.feature_id}){accuracy}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DataRef:
    """Where the real images come from (what the run was trained on)."""

    dataset: str
    root: str | None = None
    image_size: int | None = None
    center_crop: bool = False
    options: dict = field(default_factory=dict)  # the dataset's own arguments (dataset_options)

    def images(self, split: str) -> torch.Tensor:
        """uint8 (N, C, H, W) images of ``split``, preprocessed as for training."""
        return build_dataset(self.dataset, root=self.root, split=split,
                             image_size=self.image_size, center_crop=self.center_crop,
                             download=False, **self.options).preprocessed()[0]

    def content_key(self) -> str:
        """What identifies the files read, beyond the arguments (a folder's file list)."""
        return dataset_info(self.dataset).content_key(root=self.root, **self.options)

    @property
    def train_split(self) -> str:
        return dataset_info(self.dataset).train_split

    @property
    def eval_split(self) -> str:
        return dataset_info(self.dataset).eval_split


class FidScorer:
    """Scores sets of images against ``data``'s evaluation split in ``features`` space.

    ``features`` is a ``FeatureExtractor`` or ``InceptionFeatures``: an ``nn.Module`` with
    ``num_features`` and ``feature_id``, taking uint8 images. ``reference_n=None`` uses the
    whole split; ``seed`` picks subsets and the KID subsets, so scores are reproducible.
    """

    def __init__(self, features: nn.Module, data: DataRef, reference_n: int | None = None,
                 kid: bool = True, kid_subsets: int = 100, kid_subset_size: int = 1000,
                 batch_size: int = 500, seed: int = 0, cache_dir: str | os.PathLike | None = None,
                 progress: bool = False):
        self.features, self.data = features, data
        self.batch_size, self.seed, self.progress = batch_size, seed, progress
        self.cache = cache_root(cache_dir) / features.feature_id / "reference"
        # each process holds every feature it scores (the ranks gather them first), so
        # torchmetrics must not sync its states across the process group on compute
        self.fid = FrechetInceptionDistance(feature=features, reset_real_features=False,
                                            sync_on_compute=False)
        with warnings.catch_warnings():  # it keeps every feature: intended, and small here
            warnings.filterwarnings("ignore", message=".*will save all extracted features")
            self.kid = (KernelInceptionDistance(feature=features, subsets=kid_subsets,
                                                subset_size=kid_subset_size,
                                                reset_real_features=False,
                                                sync_on_compute=False) if kid else None)
        self.kid_subset_size = kid_subset_size
        reference = self.real_features(data.eval_split, reference_n)
        self.reference_n = len(reference)
        for metric in self._metrics():
            metric.update(reference, real=True)  # features pass through the feature module
        self._floors: dict[int, tuple[float, int]] = {}

    @property
    def feature_id(self) -> str:
        return self.features.feature_id

    @property
    def reference(self) -> str:
        return f"{self.data.dataset}/{self.data.eval_split}"

    def _metrics(self):
        return [m for m in (self.fid, self.kid) if m is not None]

    # ------------------------------------------------------------------ features
    @torch.no_grad()
    def extract(self, images: torch.Tensor) -> torch.Tensor:
        """(N, D) float32 features on the CPU of images in [-1, 1] or uint8, in batches."""
        out = [self.features(to_uint8(images[i:i + self.batch_size])).cpu()
               for i in range(0, len(images), self.batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.features.num_features)

    def _cache_file(self, split: str, n: int | None) -> Path:
        key = json.dumps([self.feature_id, asdict(self.data), str(Path(
            self.data.root or "").absolute()), split, n, self.seed], default=str)
        content = self.data.content_key()
        key += content and f"/{content}"  # unchanged for datasets of fixed files
        digest = hashlib.sha1(key.encode()).hexdigest()[:8]
        return self.cache / f"{self.data.dataset}-{split}-n{n or 'all'}@{digest}.pt"

    def real_features(self, split: str, n: int | None) -> torch.Tensor:
        """Features of ``n`` real images of ``split`` (a seeded subset; None: all), cached."""
        path = self._cache_file(split, n)
        cached = load_cached(path)
        if cached is not None:
            return cached
        images = self.data.images(split)
        if n is not None and n < len(images):
            pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(self.seed))
            images = images[pick[:n]]
        features = self.extract(images)
        save_torch(features, path, CACHE_FIX)
        return features

    # ------------------------------------------------------------------- scores
    def score_features(self, features: torch.Tensor) -> dict[str, float]:
        """FID and KID of a set of (N, D) features against the reference."""
        if len(features) < 2:
            raise ValueError(f"FID needs at least 2 images; got {len(features)}.")
        with torch.random.fork_rng(devices=[]):  # KID draws its subsets from the global RNG
            torch.manual_seed(self.seed)
            scores = {}
            for metric in self._metrics():
                metric.reset()  # keeps the reference (reset_real_features=False)
                metric.update(features, real=False)
            scores["fid"] = float(self.fid.compute())
            if self.kid is not None:
                self.kid.subset_size = min(self.kid_subset_size, len(features), self.reference_n)
                kid_mean, kid_std = self.kid.compute()
                scores["kid"], scores["kid_std"] = float(kid_mean), float(kid_std)
        return scores

    def floor(self, n: int) -> tuple[float, int]:
        """(FID of n real training images against the reference, the n actually used)."""
        if n not in self._floors:
            features = self.real_features(self.data.train_split, n)
            self._floors[n] = (self.score_features(features)["fid"], len(features))
        return self._floors[n]

    def score(self, images: torch.Tensor | None = None, features: torch.Tensor | None = None,
              sampler: str | None = None, steps: int | None = None) -> FidResult:
        """The protocol result for ``images`` (or their precomputed ``features``)."""
        features = self.extract(images) if features is None else features
        scores = self.score_features(features)
        floor, floor_n = self.floor(len(features))
        return FidResult(fid=scores["fid"], floor=floor, n=len(features),
                         feature_id=self.feature_id, reference=self.reference,
                         reference_n=self.reference_n, floor_n=floor_n, sampler=sampler,
                         steps=steps, kid=scores.get("kid"), kid_std=scores.get("kid_std"),
                         features=getattr(self.features, "description", None))

    # ---------------------------------------------------------------- sampling
    def class_accuracy(self, features: torch.Tensor, labels: torch.Tensor | None) -> float | None:
        """The share of images whose features the feature network's own classifier head
        assigns to ``labels``; None without labels or for a network without a head (Inception,
        the autoencoder of an image folder)."""
        if labels is None or not getattr(self.features, "classifies", False):
            return None
        classify = self.features.classify
        predicted = torch.cat([classify(features[i:i + self.batch_size]).argmax(1).cpu()
                               for i in range(0, len(features), self.batch_size)])
        return int((predicted == labels).sum()) / len(labels)

    def sample_features(self, pipeline, n: int, sampler, steps: int,
                        batch_size: int = 250, eta: float = 0.0,
                        timestep_spacing: str | None = "trailing",
                        name: str | None = None,
                        guidance: Guidance | None = None) -> torch.Tensor:
        """Features of ``n`` samples from ``pipeline`` on every rank, in order.

        x_T is read chunk by chunk from one generator seeded with ``seed`` (the same starting
        noise for every sampler and step count); under ``torchrun`` the chunks of
        ``batch_size`` images are shared out among the ranks, each extracts the features of
        its own, and the result does not depend on the number of processes. A conditional
        model (``pipeline.num_classes``), or a guided one, samples every class equally often:
        0..K-1 in turn (``guidance`` as for the pipeline). ``sampler``: a name or a scheduler
        object (``name`` then says what it is called).
        """
        name = name or sampler
        stream = torch.Generator().manual_seed(self.seed)
        shape = pipeline.sample_shape
        y = self.labels(pipeline, n, guidance)
        return pipeline.sample_across_ranks(
            n, noise=lambda start, size: torch.randn((size, *shape), generator=stream),
            seed=self.seed, chunk_size=batch_size, steps=steps, sampler=sampler, eta=eta,
            timestep_spacing=timestep_spacing, y=y, transform=self.extract,
            progress=self.progress, desc=f"FID {name}-{steps}", guidance=guidance).images

    @staticmethod
    def labels(pipeline, n: int, guidance: Guidance | None = None) -> torch.Tensor | None:
        """The class-balanced labels of ``n`` samples (None for an unguided unconditional
        model)."""
        return balanced_labels(n, (guidance or Guidance()).label_classes(pipeline.num_classes))

    def score_pipeline(self, pipeline, n: int, sampler="ddim", steps: int = 50,
                       batch_size: int = 250, eta: float = 0.0,
                       timestep_spacing: str | None = "trailing",
                       name: str | None = None, guidance: Guidance | None = None) -> FidResult:
        """Sample, extract and score (with the class accuracy of a conditional or guided
        draw); split across ranks under ``torchrun``, scored once on rank 0, and the result
        handed to every rank. ``sampler``: a name, or a scheduler object called ``name``."""
        features = self.sample_features(pipeline, n, sampler, steps, batch_size, eta,
                                        timestep_spacing, name, guidance)
        result = None
        if dist.is_main():
            result = self.score(features=features, sampler=name or sampler, steps=steps)
            result.class_accuracy = self.class_accuracy(features,
                                                        self.labels(pipeline, n, guidance))
        return dist.broadcast_object(result)


class FidEvaluator:
    """``evaluator(pipeline) -> {"fid", "kid", "fid_floor"}``: the trainer's periodic FID.

    Samples ``n`` images with ``sampler`` (its one step count; None: every training step)
    from the seeded generator of ``scorer``, so successive evaluations during training see
    the same starting noise.
    """

    def __init__(self, scorer: FidScorer, n: int = 1000, sampler: SamplerSpec | None = None,
                 batch_size: int = 250):
        self.scorer, self.n = scorer, n
        self.sampler = SamplerSpec() if sampler is None else sampler
        self.batch_size = batch_size
        self.last: FidResult | None = None

    def __call__(self, pipeline) -> dict[str, float]:
        device = pipeline.device
        cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else []  # only this rank's GPU, not every visible one
        with torch.random.fork_rng(devices=cuda):  # draws nothing from the training streams
            scheduler = pipeline.scheduler
            steps = self.sampler.step_counts(scheduler.num_train_timesteps)[0]
            self.last = self.scorer.score_pipeline(
                pipeline, self.n, self.sampler.build(scheduler), steps, self.batch_size,
                name=self.sampler.name)
        if dist.is_main():
            print(self.last, flush=True)
        results = {"fid": self.last.fid, "fid_floor": self.last.floor}
        if self.last.kid is not None:
            results["kid"] = self.last.kid
        if self.last.class_accuracy is not None:
            results["class_accuracy"] = self.last.class_accuracy
        return results
