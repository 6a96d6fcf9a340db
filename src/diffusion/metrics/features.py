"""Domain feature networks for FID: a small network per dataset, trained by the framework.

Inception features suit 28x28 greyscale digits poorly (and its weights may not be at hand),
so each dataset gets its own classifier, trained once on the dataset's train split with a
fixed seed and cached outside the repository under ``<cache>/features/<id>/``; a folder of the
user's own images, which may have no labels, gets an autoencoder instead (its bottleneck is the
feature space, ``diffusion.metrics.autoencoder``):

- ``weights.pt``: the classifier's state dict (loaded with ``weights_only=True``);
- ``info.json``: its id, the settings it was trained with and its test accuracy (an
  autoencoder's: its test reconstruction error).

The id (``mnist-lenet@1a2b3c4d``) names the dataset, the architecture and a hash of every
setting that changes the weights, including a fingerprint of the training images, so a
different dataset or recipe can never reuse another's network. Its penultimate activations
are the features that torchmetrics' FID and KID statistics are computed on. The networks
themselves are in ``diffusion.metrics.classifiers``; this module trains, caches and loads them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from diffusion.data import build_dataset, to_model_range
from diffusion.errors import FeatureNetworkError
from diffusion.metrics.classifiers import ARCHITECTURES
from diffusion.runtime.files import save_torch, writable_folder, write_atomic

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CACHE_FIX = ("free space there, or set DIFFUSION_CACHE (or metrics.cache_dir) to a writable "
             "folder with space")


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$DIFFUSION_CACHE/features``, else ``~/.cache/diffusion/features``."""
    if cache_dir:
        return writable_folder(Path(cache_dir).expanduser().absolute(), CACHE_FIX)
    base = os.environ.get("DIFFUSION_CACHE") or "~/.cache/diffusion"
    return writable_folder((Path(base) / "features").expanduser().absolute(), CACHE_FIX)


@dataclass(frozen=True)
class FeatureSpec:
    """Everything that decides a feature network's weights (hashed into its id)."""

    dataset: str
    arch: str
    image_size: int
    channels: int
    num_classes: int
    center_crop: bool = False
    epochs: int = 4
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 5e-4
    flip: bool = False          # random horizontal flips while training
    shift: int = 2              # random translations of up to this many pixels
    seed: int = 0
    data_fingerprint: str = ""  # of the training images and labels
    version: int = field(default=FORMAT_VERSION)

    @property
    def id(self) -> str:
        digest = hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()
        return f"{self.dataset}-{self.arch}@{digest[:8]}"

    def build(self) -> nn.Module:
        cls = ARCHITECTURES[self.arch]
        return cls(in_channels=self.channels, num_classes=self.num_classes,
                   image_size=self.image_size)


# Per-dataset recipes: MNIST-likes take a minute or two on a CPU; Flowers102 is a
# from-scratch classifier on 2,040 images, useful as a feature space rather than accurate.
RECIPES: dict[str, dict] = {
    "mnist": dict(arch="lenet", epochs=3),
    "fashion_mnist": dict(arch="lenet", epochs=4, shift=1),
    "flowers102": dict(arch="resnet", epochs=30, batch_size=64, lr=3e-3, flip=True, shift=4),
    "image_folder": dict(arch="autoencoder", epochs=40, batch_size=64, lr=2e-3, flip=True,
                         shift=0, max_steps=2000),
}
"""``max_steps``: fewer epochs for large training sets (a folder of the user's own images may
hold 100 or 100,000), unless ``epochs`` is given (``metrics.feature_epochs``)."""


class FeatureExtractor(nn.Module):
    """uint8 images (N, C, H, W) in [0, 255] -> (N, num_features) float32 features.

    The feature module torchmetrics' ``FrechetInceptionDistance`` and
    ``KernelInceptionDistance`` accept through ``feature=``: it has ``num_features`` and
    takes the uint8 images those metrics expect by default (``normalize=False``). A float
    tensor (N, num_features) passes through unchanged, so cached features of the reference
    set are fed to the same metrics' ``update`` without recomputing them.
    """

    def __init__(self, net: nn.Module, feature_id: str, accuracy: float | None = None,
                 description: str | None = None):
        super().__init__()
        self.net = net.eval()
        self.num_features = int(net.num_features)
        self.feature_id = feature_id
        self.accuracy = accuracy
        self.description = description
        for p in self.net.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> FeatureExtractor:
        return super().train(False)  # BatchNorm and dropout stay in inference mode

    @property
    def classifies(self) -> bool:
        """Whether the network has a class head: a domain classifier does, the autoencoder
        of an image folder does not."""
        return isinstance(getattr(self.net, "head", None), nn.Module)

    @torch.no_grad()
    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Class logits of (N, num_features) features: the classifier's own head."""
        device = next(self.net.parameters()).device
        return self.net.head(features.to(device))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2 and x.shape[1] == self.num_features and x.is_floating_point():
            return x
        if x.dtype != torch.uint8:
            raise TypeError(f"FeatureExtractor expects uint8 images in [0, 255]; got {x.dtype} "
                            "(quantize with diffusion.metrics.to_uint8).")
        device = next(self.net.parameters()).device
        return self.net.features(to_model_range(x.to(device))).float()


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> uint8 [0, 255], rounded as when saving a PNG."""
    if images.dtype == torch.uint8:
        return images
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def fingerprint(*tensors: torch.Tensor) -> str:
    h = hashlib.sha1()
    for t in tensors:
        h.update(t.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def _augment(x: torch.Tensor, spec: FeatureSpec, generator: torch.Generator) -> torch.Tensor:
    """Random flips and translations (one shift per batch, cheap on a CPU)."""
    if spec.flip:
        flip = torch.rand(len(x), generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if spec.shift:
        dx, dy = (torch.randint(-spec.shift, spec.shift + 1, (2,), generator=generator)).tolist()
        x = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
    return x


@torch.no_grad()
def test_scores(net: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                batch_size: int = 1000) -> dict[str, float]:
    """``net.test_scores`` (a classifier's accuracy, an autoencoder's reconstruction error)
    over uint8 ``images``, batch by batch, weighted by batch size."""
    net.eval()
    device = next(net.parameters()).device
    totals: dict[str, float] = {}
    for i in range(0, len(images), batch_size):
        x = to_model_range(images[i:i + batch_size].to(device))
        for key, value in net.test_scores(x, labels[i:i + batch_size].to(device)).items():
            totals[key] = totals.get(key, 0.0) + value * len(x)
    return {key: value / len(images) for key, value in totals.items()}


def train_classifier(spec: FeatureSpec, train: tuple[torch.Tensor, torch.Tensor],
                     progress: bool = True, device: str | torch.device = "cpu") -> nn.Module:
    """Train ``spec``'s network on uint8 (images, labels); draws only from its own seeded
    generators, so building a feature network never shifts anyone else's random stream."""
    with torch.random.fork_rng():
        torch.manual_seed(spec.seed)  # initial weights and dropout masks
        return _train(spec, *train, progress, torch.device(device))


def _train(spec: FeatureSpec, images: torch.Tensor, labels: torch.Tensor, progress: bool,
           device: torch.device) -> nn.Module:
    net = spec.build().to(device)
    generator = torch.Generator().manual_seed(spec.seed)  # order and augmentation
    optimizer = torch.optim.AdamW(net.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    steps_per_epoch = max(1, len(images) // spec.batch_size)
    lr_schedule = torch.optim.lr_scheduler.OneCycleLR(  # (at least 10 steps long: no
        optimizer, max_lr=spec.lr, pct_start=0.2,         # zero-length warm-up on tiny sets)
        total_steps=max(10, spec.epochs * steps_per_epoch))
    bar = tqdm(total=spec.epochs * steps_per_epoch, desc=f"training {spec.id}",
               disable=not progress, dynamic_ncols=True)
    for _ in range(spec.epochs):
        net.train()
        order = torch.randperm(len(images), generator=generator)
        for b in range(steps_per_epoch):
            index = order[b * spec.batch_size:(b + 1) * spec.batch_size]
            x = _augment(images[index], spec, generator)
            x = to_model_range(x.to(device))
            loss = net.loss(x, labels[index].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            lr_schedule.step()
            bar.update(1)
            if bar.n % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return net.eval()


# ---------------------------------------------------------------------------------------------
# Load from the cache, or train and cache
# ---------------------------------------------------------------------------------------------


def _save_atomic(obj, path: Path) -> None:
    if isinstance(obj, str):
        write_atomic(path, obj, CACHE_FIX)
    else:
        save_torch(obj, path, CACHE_FIX)


def capped_epochs(epochs: int, max_steps: int, n: int, batch_size: int) -> int:
    """``epochs``, or fewer (at least one) where ``epochs`` of ``n`` images in batches of
    ``batch_size`` would take more than ``max_steps`` steps."""
    return max(1, min(epochs, max_steps // max(1, n // batch_size)))


def load_feature_network(dataset: str, root: str | os.PathLike | None = None,
                         image_size: int | None = None, center_crop: bool = False,
                         cache_dir: str | os.PathLike | None = None, progress: bool = True,
                         device: str | torch.device = "cpu", options: dict | None = None,
                         **overrides) -> FeatureExtractor:
    """The cached feature network for ``dataset`` (trained first if it is not cached yet).

    ``options``: the dataset's own arguments (``diffusion.data.dataset_options``: an image
    folder's held-out split). ``overrides`` change the dataset's recipe (``epochs``, ``lr``,
    ``seed``, ...), and so its id.
    """
    from filelock import FileLock

    if dataset not in RECIPES:
        raise FeatureNetworkError(
            f"No feature network recipe for dataset {dataset!r}; known: {', '.join(RECIPES)} "
            "(or use metrics.features=inception).")
    options = options or {}
    train_set = build_dataset(dataset, root=root, split=None,
                              image_size=image_size, center_crop=center_crop, **options)
    train = train_set.preprocessed()
    recipe = {**RECIPES[dataset], **{k: v for k, v in overrides.items() if v is not None}}
    max_steps = recipe.pop("max_steps", None)
    if max_steps and overrides.get("epochs") is None:
        recipe["epochs"] = capped_epochs(recipe["epochs"], max_steps, len(train[0]),
                                         recipe.get("batch_size", FeatureSpec.batch_size))
    spec = FeatureSpec(dataset=dataset, image_size=int(train[0].shape[-1]),
                       channels=int(train[0].shape[1]), num_classes=train_set.num_classes,
                       center_crop=center_crop, data_fingerprint=fingerprint(*train), **recipe)
    folder = cache_root(cache_dir) / spec.id
    weights, info_file = folder / "weights.pt", folder / "info.json"
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / ".lock")):
        if not (weights.is_file() and info_file.is_file()):
            start = time.perf_counter()
            net = train_classifier(spec, train, progress=progress, device=device)
            test = build_dataset(dataset, root=root, split=train_set.eval_split,
                                 image_size=image_size, center_crop=center_crop,
                                 **options).preprocessed()
            info = {"id": spec.id, **test_scores(net, *test),
                    "test_split": train_set.eval_split, "train_split": train_set.split,
                    "train_images": len(train[0]),
                    "train_seconds": round(time.perf_counter() - start, 1),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "torch": torch.__version__, "settings": asdict(spec)}
            _save_atomic({k: v.cpu() for k, v in net.state_dict().items()}, weights)
            _save_atomic(json.dumps(info, indent=2) + "\n", info_file)
            log.info("Feature network %s trained (%s): %s", spec.id, folder,
                     ", ".join(f"{k} {v:.4g}" for k, v in info.items() if k.startswith("test_")
                               and isinstance(v, float)))
    try:
        info = json.loads(info_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise FeatureNetworkError(f"Feature network record {info_file} is damaged; delete "
                                  f"{folder} to retrain it.") from None
    net = spec.build()
    try:
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same thing
        raise FeatureNetworkError(
            f"Feature network weights {weights} are unreadable ({type(exc).__name__}); "
            f"delete {folder} to retrain it.") from None
    return FeatureExtractor(net.to(device), spec.id, info.get("test_accuracy"),
                            describe(spec, info, net.num_features))


def describe(spec: FeatureSpec, info: dict, num_features: int) -> str:
    """What the features are, for ``eval.json``: the network, what it learnt from, and what
    its scores can be compared with."""
    if spec.arch == "autoencoder":
        learnt = (f"the {num_features}-d bottleneck of an autoencoder the framework trained on the "
                  f"{info['train_images']} {spec.dataset}/{info.get('train_split', 'train')} "
                  f"images without labels (test reconstruction MSE {info['test_mse']:.4f})")
    else:
        learnt = (f"the penultimate layer of a {spec.arch} classifier the framework trained "
                  f"on {spec.dataset}'s labels (test accuracy "
                  f"{100 * info['test_accuracy']:.1f}%)")
    return (f"{learnt}; FID and KID are comparable only between scores with feature_id "
            f"{spec.id}")
