"""Guidance from the command line: ``diffusion.sample`` and ``diffusion.evaluate`` with labels,
``guidance_scale`` and a classifier; their one-sentence errors; class accuracy; the trainer's
per-class grids."""

from __future__ import annotations

import pytest
from PIL import Image

from diffusion.commands.evaluate import evaluate
from diffusion.commands.sample import check_sample_config, sample
from diffusion.commands.train_classifier import train_classifier
from diffusion.data import build_dataset
from diffusion.errors import ConfigError
from diffusion.metrics import DataRef, FidScorer, load_feature_network
from diffusion.reporting.pictures import read_grid_box
from diffusion.runs.records import read_eval
from hydra_utils import compose_config
from test_classifier import classifier_overrides
from test_sample_errors import _cli, _fails_with
from test_train import run_training

SMALL = ("model=basic", "model.base_channels=8", "trainer.val_every=0")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_mnist_root):
    """4-step runs (unconditional, class-conditional with label dropout) and a 2-step
    classifier, on the tiny data."""
    tmp = tmp_path_factory.mktemp("guided")
    plain, _ = run_training(tmp, tiny_mnist_root, *SMALL, "trainer.sample_every=0",
                            name="plain")
    conditional, _ = run_training(tmp, tiny_mnist_root, *SMALL, "conditioning=class",
                                  "trainer.sample_n=25", "trainer.sample_guidance_scale=2",
                                  name="conditional")
    classifier = tmp / "classifier"
    train_classifier(compose_config(classifier_overrides(tiny_mnist_root, "steps=2"),
                                    config_name="train_classifier"), classifier)
    cosine = tmp / "cosine-classifier"
    train_classifier(compose_config(classifier_overrides(
        tiny_mnist_root, "steps=1", "scheduler.beta_schedule=cosine"),
        config_name="train_classifier"), cosine)
    return {"plain": plain, "conditional": conditional, "classifier": classifier,
            "cosine": cosine}


def _sample_config(runs, run: str, *overrides: str):
    args = [f"run={runs[run]}", "n=4", "sampler.steps=2", "device=cpu"]
    for word in overrides:  # run names stand for their folders
        key, _, value = word.partition("=")
        args.append(f"{key}={runs[value]}" if value in runs else word)
    return compose_config(args, config_name="sample")


# (run, overrides, the one sentence); a run name as a value stands for its folder
CASES = {
    "scale-unconditional": ("plain", ["guidance_scale=3", "labels=all"],
                            "guidance_scale=3 needs a class-conditional model trained with "
                            "label dropout; this model is unconditional: leave guidance_scale "
                            "out (or use a classifier)."),
    "scale-negative": ("conditional", ["guidance_scale=-1", "labels=all"],
                       "guidance_scale must be a number >= 0; got -1."),
    "rescale": ("conditional", ["guidance_scale=2", "guidance_rescale=2", "labels=all"],
                "guidance_rescale must be a number in [0, 1]; got 2."),
    "rescale-alone": ("conditional", ["guidance_rescale=0.7", "labels=all"],
                      "guidance_rescale=0.7 rescales classifier-free guidance, which only "
                      "guidance_scale turns on: set guidance_scale, or leave guidance_rescale "
                      "out."),
    "no-labels": ("conditional", ["guidance_scale=2"],
                  "Guidance needs labels to steer towards: pass labels=3, labels=[0,1,2] or "
                  "labels=all (every class equally often)."),
    "labels-out-of-range": ("conditional", ["guidance_scale=2", "labels=[3,10]"],
                            "labels must be class labels in [0, 9]; got 10."),
    "labels-unconditional": ("plain", ["labels=[1]"], "labels was given but the model is "
                             "unconditional (num_classes=None): leave labels out."),
    "all-unconditional": ("plain", ["labels=all"], "labels=all needs a class-conditional run "
                          "or a classifier; this run is unconditional: leave labels out."),
    "classifier-scale-alone": ("plain", ["classifier_scale=2", "labels=all"],
                               "classifier_scale needs classifier=<a run folder of "
                               "diffusion.train_classifier>; set one, or leave "
                               "classifier_scale out."),
    "classifier-not-one": ("plain", ["classifier=conditional", "labels=all"],
                           "classifier={conditional} is not a classifier run: pass a folder "
                           "that diffusion.train_classifier printed."),
    "classifier-other-noise": ("plain", ["classifier=cosine", "labels=all"],
                               "classifier={cosine} was trained with "
                               "scheduler.beta_schedule=cosine but run {plain} has linear: "
                               "train the classifier with the run's settings (python -m "
                               "diffusion.train_classifier scheduler.beta_schedule=linear ...)."),
    "classifier-labels": ("plain", ["classifier=classifier", "labels=[12]"],
                          "labels must be class labels in [0, 9]; got 12."),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_guidance_options_are_checked_before_the_model_is_loaded(runs, case):
    run, overrides, message = CASES[case]
    with pytest.raises(ValueError) as error:
        check_sample_config(_sample_config(runs, run, *overrides))
    assert str(error.value) == message.format(**{k: str(v) for k, v in runs.items()})


def test_a_run_without_label_dropout_refuses_classifier_free_guidance(runs, tmp_path,
                                                                      tiny_mnist_root):
    no_dropout, _ = run_training(tmp_path, tiny_mnist_root, *SMALL, "conditioning=class",
                                 "trainer.label_dropout=0", "trainer.sample_every=0")
    runs = {**runs, "no_dropout": no_dropout}
    with pytest.raises(ConfigError, match=r"^guidance_scale=2 needs the model's unconditional "
                                          r"prediction, but run .* was trained without label "
                                          r"dropout"):
        check_sample_config(_sample_config(runs, "no_dropout", "guidance_scale=2",
                                           "labels=all"))
    check_sample_config(_sample_config(runs, "no_dropout", "guidance_scale=1", "labels=all"))


def test_the_command_line_ends_in_the_sentence(runs):
    _fails_with(_cli("diffusion.sample", f"run={runs['plain']}", "guidance_scale=3",
                     "labels=all"), CASES["scale-unconditional"][2])


def test_sample_with_both_guidances_writes_a_named_grid(runs):
    written = sample(_sample_config(runs, "conditional", "guidance_scale=3", "labels=[7]",
                                    "classifier=classifier", "classifier_scale=2"))
    assert written["grid"].name == ("ddim-2_n4_seed0_labels7_cfg3_classifierclassifier-s2.png")
    unguided = sample(_sample_config(runs, "conditional", "labels=[7]"))["grid"]
    assert Image.open(written["grid"]).tobytes() != Image.open(unguided).tobytes()


def test_the_trainers_grid_has_one_row_per_class(runs):
    box = read_grid_box(runs["conditional"] / "samples" / "step_00000004.png")
    # 25 images for 10 classes: 10 rows of 2, each 28 px with 2 px of padding
    assert (box.rows, box.columns) == (10, 2)
    assert (box.cell_width, box.cell_height) == (30 * box.scale, 30 * box.scale)
    assert box.left > 0 and box.top > 0  # the class names beside, the title above


def test_class_accuracy_counts_the_requested_labels(tiny_mnist_root, tmp_path):
    features = load_feature_network("mnist", root=tiny_mnist_root, cache_dir=tmp_path,
                                    progress=False, epochs=20)
    scorer = FidScorer(features, DataRef("mnist", root=str(tiny_mnist_root), image_size=28),
                       kid=False, cache_dir=tmp_path)
    images, labels = build_dataset("mnist", root=tiny_mnist_root, split="test").preprocessed()
    extracted = scorer.extract(images)
    right = scorer.class_accuracy(extracted, labels)
    assert right == pytest.approx(features.accuracy)  # the network's own test accuracy
    assert right > 0.5
    assert scorer.class_accuracy(extracted, (labels + 1) % 10) < 0.3
    assert scorer.class_accuracy(extracted, None) is None


def test_evaluate_scores_each_guidance_scale_with_its_class_accuracy(runs, tmp_path):
    cfg = compose_config([f"run={runs['conditional']}", "n=10", "sampler.steps=2", "device=cpu",
                          "batch_size=10", "guidance_scale=[0,1,3]", "plot=false",
                          f"metrics.cache_dir={tmp_path}", "metrics.feature_epochs=2",
                          "metrics.kid=false"], config_name="evaluate")
    results = evaluate(cfg)
    assert len(results) == 3 and all(0 <= r.class_accuracy <= 1 for r in results)
    entries = sorted(read_eval(runs["conditional"]).values(), key=lambda e: e["guidance_scale"])
    assert [e["guidance_scale"] for e in entries] == [0, 1, 3]
    assert all(e["labels"] == "balanced" and e["classifier"] is None for e in entries)
    assert all("guidance_scale=0,1,3" in e["command"] for e in entries)
    assert [e["class_accuracy"] for e in entries] == [r.class_accuracy for r in results]
    assert len({e["fid"] for e in entries}) == 3  # three different sets of images
