"""The noise-aware classifier (``diffusion.train_classifier``): it learns, its accuracy falls
with the noise level, and its run folder loads back into the same network."""

from __future__ import annotations

import json

import pytest
import torch

from diffusion.commands.train_classifier import train_classifier
from diffusion.data.synthetic import write_shape_folder
from diffusion.errors import ConfigError
from diffusion.runs.load import load_classifier
from diffusion.training.classifier import noise_bands
from diffusion.training.loggers import read_metrics
from hydra_utils import compose_config


def classifier_overrides(data_root, *extra: str) -> list[str]:
    """A small classifier on the tiny test data, on the CPU."""
    return [f"paths.data_dir={data_root}", "device=cpu", "classifier_net.base_channels=8",
            "classifier_net.channel_mult=[1,2,2]", "batch_size=32", "lr=3e-3", "eval_n=32",
            "noise_levels=4", "progress=false", *extra]


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory, tiny_mnist_root):
    run = tmp_path_factory.mktemp("classifier")
    cfg = compose_config(classifier_overrides(tiny_mnist_root, "steps=150", "log_every=50",
                                              "eval_every=75"), config_name="train_classifier")
    return run, train_classifier(cfg, run)


def test_noise_bands_cover_every_timestep_once():
    for T, levels in ((1000, 10), (1000, 7), (10, 10), (5, 3)):
        bands = noise_bands(T, levels)
        assert [t for lo, hi in bands for t in range(lo, hi)] == list(range(T))


def test_classifier_learns_the_classes_and_loses_them_in_the_noise(classifier_run):
    run, summary = classifier_run
    accuracy = summary["accuracy_per_noise_band"]
    assert list(accuracy) == ["t000-249", "t250-499", "t500-749", "t750-999"]
    # 10 seven-segment digits, 64 to learn from, 32 to test on; chance is 10%. After 150
    # steps the least noisy band is told apart 4 times in 10 (measured 0.44), and at
    # t >= 750 (linear schedule: alpha_bar < 0.02) little is left to tell apart
    assert accuracy["t000-249"] >= 0.35
    assert accuracy["t750-999"] <= accuracy["t000-249"] - 0.2
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records if "eval/accuracy_t000-249" in r] == [75, 150]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert losses[-1] < losses[0]
    assert json.loads((run / "accuracy.json").read_text())["accuracy_per_noise_band"] == accuracy


def test_classifier_run_loads_back(classifier_run, tiny_mnist_root):
    run, _ = classifier_run
    model = load_classifier(run)
    assert model.num_classes == 10 and not model.training
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    state = torch.load(run / "checkpoints" / "step_00000150.pt", weights_only=True)
    assert state["step"] == 150
    again = load_classifier(run, run / "checkpoints" / "step_00000075.pt")
    assert not torch.equal(model(x, torch.tensor([10, 10, 10])),
                           again(x, torch.tensor([10, 10, 10])))


def test_an_unlabelled_folder_is_refused_before_any_training(tmp_path):
    folder = write_shape_folder(tmp_path / "shapes", n=12, labelled=False)
    cfg = compose_config(classifier_overrides(tmp_path, "data=image_folder",
                                              f"data.root={folder}", "steps=2"),
                         config_name="train_classifier")
    with pytest.raises(ConfigError, match=r"^diffusion.train_classifier needs labelled data, "
                                          r"and data image_folder has no classes"):
        train_classifier(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
