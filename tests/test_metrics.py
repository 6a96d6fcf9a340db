"""FID and KID: the feature network cache, the protocol's sanity checks, the trainer's periodic
FID and ``diffusion.evaluate`` on a tiny run folder."""

from __future__ import annotations

import json
import re
import shlex
import shutil

import pytest
import torch
from torchmetrics.image.fid import FrechetInceptionDistance

from diffusion.commands.evaluate import _list_overrides, evaluate
from diffusion.metrics import (
    DataRef,
    FeatureNetworkError,
    FidResult,
    FidScorer,
    check_inception_weights,
    format_score,
    load_feature_network,
    to_uint8,
)
from diffusion.metrics.inception import default_weights_path
from diffusion.runs.records import entry_key, read_eval
from diffusion.training.loggers import read_metrics
from hydra_utils import compose_config
from test_train import run_training

EPOCHS = 20  # the tiny train split is 64 images: a few dozen steps fit it


def as_hydra_writes_it(run_dir):
    """In-process training writes config.yaml; the CLI's Hydra also writes .hydra/."""
    (run_dir / ".hydra").mkdir(exist_ok=True)
    (run_dir / ".hydra" / "config.yaml").write_text((run_dir / "config.yaml").read_text())


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("features")


@pytest.fixture(scope="module")
def features(tiny_mnist_root, cache):
    return load_feature_network("mnist", root=tiny_mnist_root, cache_dir=cache, progress=False,
                                epochs=EPOCHS)


@pytest.fixture(scope="module")
def scorer(features, tiny_mnist_root, cache):
    return FidScorer(features, DataRef("mnist", root=str(tiny_mnist_root), image_size=28),
                     kid_subset_size=16, cache_dir=cache)


def test_feature_network_is_cached_with_its_accuracy(features, tiny_mnist_root, cache):
    assert re.fullmatch(r"mnist-lenet@[0-9a-f]{8}", features.feature_id)
    folder = cache / features.feature_id
    info = json.loads((folder / "info.json").read_text())
    assert info["id"] == features.feature_id and info["test_accuracy"] == features.accuracy
    assert info["settings"]["epochs"] == EPOCHS and info["train_images"] == 64
    mtime = (folder / "weights.pt").stat().st_mtime_ns
    again = load_feature_network("mnist", root=tiny_mnist_root, cache_dir=cache, progress=False,
                                 epochs=EPOCHS)
    assert again.feature_id == features.feature_id
    assert (folder / "weights.pt").stat().st_mtime_ns == mtime  # loaded, not retrained
    other = load_feature_network("mnist", root=tiny_mnist_root, cache_dir=cache, progress=False,
                                 epochs=1)
    assert other.feature_id != features.feature_id  # another recipe, another id


def test_reference_against_itself_scores_zero(scorer):
    reference = scorer.real_features("test", None)
    assert scorer.score(features=reference).fid == pytest.approx(0.0, abs=1e-3)


def test_noise_scores_far_above_the_floor(scorer):
    floor, floor_n = scorer.floor(32)
    noise = torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    result = scorer.score(noise)
    assert floor_n == 32 and result.floor == floor
    assert 0 <= floor < result.fid / 5
    assert result.kid is not None and result.kid > 0


def test_images_go_through_torchmetrics_feature_module(scorer, tiny_mnist_root, features):
    """Scoring uint8 images with torchmetrics' FID directly gives the scorer's number."""
    images = DataRef("mnist", root=str(tiny_mnist_root)).images("train")[:32]
    fid = FrechetInceptionDistance(feature=features)
    fid.update(DataRef("mnist", root=str(tiny_mnist_root)).images("test"), real=True)
    fid.update(images, real=False)
    as_float = images.float() / 127.5 - 1
    assert float(fid.compute()) == pytest.approx(scorer.score(as_float).fid, rel=1e-4)
    assert torch.equal(to_uint8(as_float), images)


def test_result_states_its_protocol():
    result = FidResult(fid=4.1234, floor=0.8012, n=10000, feature_id="mnist-lenet@0123abcd",
                       reference="mnist/test", reference_n=10000, floor_n=10000,
                       sampler="ddim", steps=50)
    assert str(result) == "FID 4.12 (floor 0.80, n=10000, ddim-50, mnist-lenet@0123abcd)"
    assert [format_score(v) for v in (1e-9, 0.834, 12.34, 157.2)] == ["0", "0.83", "12.3", "157"]


def test_missing_inception_weights_name_the_file_and_place(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    expected = (tmp_path / "torch" / "hub" / "checkpoints"
                / "weights-inception-2015-12-05-6726825d.pth")
    assert default_weights_path() == expected
    with pytest.raises(FeatureNetworkError, match=re.escape(
            f"Inception weights not found: put {expected.name} (from https://github.com/")) as err:
        check_inception_weights()
    assert f"at {expected}," in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(FeatureNetworkError, match=r"put mine\.pth .* at .*mine\.pth"):
        check_inception_weights(tmp_path / "mine.pth")


def test_steps_list_is_not_a_sweep():
    assert _list_overrides(["run=x", "sampler.steps=10,20,50", "n=5"]) == [
        "run=x", "sampler.steps=[10,20,50]", "n=5"]
    assert _list_overrides(["sampler.steps=[1,2]", "sampler.steps=7"]) == [
        "sampler.steps=[1,2]", "sampler.steps=7"]


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory, tiny_mnist_root, cache):
    """A few-step run that evaluates a small FID every 2 steps."""
    run_dir, _ = run_training(
        tmp_path_factory.mktemp("eval"), tiny_mnist_root, "model=basic", "model.base_channels=8",
        "trainer.eval_every=2", "trainer.eval_n=8", "sampler.steps=2",
        f"metrics.cache_dir={cache}",
        f"metrics.feature_epochs={EPOCHS}", "metrics.kid_subset_size=8")
    as_hydra_writes_it(run_dir)
    return run_dir


def test_trainer_evaluates_and_keeps_the_best_checkpoint(evaluated_run):
    evals = [r for r in read_metrics(evaluated_run / "metrics.jsonl") if "eval/fid" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert len({r["eval/fid_floor"] for r in evals}) == 1  # the same floor at every evaluation
    best = torch.load(evaluated_run / "checkpoints" / "best.pt", weights_only=True)
    assert best["step"] == min(evals, key=lambda r: r["eval/fid"])["step"]
    assert best["best"] == pytest.approx(min(r["eval/fid"] for r in evals))


def test_fid_orders_real_blurred_and_noise(scorer, tiny_mnist_root):
    """Real training images score near the floor, blurring moves them away, noise is far off.
    Measured: real 7.9 (floor 10.5), 3x3 blur 33, 5x5 blur 70, noise 475."""
    real = DataRef("mnist", root=str(tiny_mnist_root)).images("train")[:32].float() / 127.5 - 1
    blurred = [torch.nn.functional.avg_pool2d(real, k, stride=1, padding=k // 2,
                                              count_include_pad=False) for k in (3, 5)]
    noise = torch.randn(real.shape, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    fids = [scorer.score(images).fid for images in (real, *blurred, noise)]
    floor, _ = scorer.floor(32)
    assert fids[0] < 2 * floor and fids[0] < fids[1] / 2, fids
    assert fids[1] < fids[2] < fids[3] / 3, fids


def _evaluate(run_dir, cache, *overrides):
    cfg = compose_config([f"run={run_dir}", f"metrics.cache_dir={cache}",
                          f"metrics.feature_epochs={EPOCHS}", "metrics.kid_subset_size=8",
                          "batch_size=8", "device=cpu", *overrides], config_name="evaluate")
    return evaluate(cfg)


def test_evaluate_writes_eval_json_metrics_and_plot(evaluated_run, cache):
    results = _evaluate(evaluated_run, cache, "n=16", "sampler.steps=[2,4]")
    assert [(r.sampler, r.steps, r.n) for r in results] == [("ddim", 2, 16), ("ddim", 4, 16)]
    entries = read_eval(evaluated_run)
    assert sorted((e["sampler"], e["steps"], e["n"]) for e in entries.values()) == [
        ("ddim", 2, 16), ("ddim", 4, 16)]
    key, entry = next((k, e) for k, e in entries.items() if e["steps"] == 4)
    assert key == entry_key(entry) == (
        f"sampler=ddim steps=4 n=16 eta=0.0 timestep_spacing=trailing seed=0 "
        f"checkpoint=step_00000004.pt step=4 "
        f"feature_id={entry['feature_id']} reference_n=32")
    assert entry["reference"] == "mnist/test" and entry["reference_n"] == 32
    assert entry["step"] == 4 and entry["floor_n"] == 16 and entry["fid"] > entry["floor"]
    assert (" n=16 sampler=ddim sampler.steps=2,4 sampler.eta=0.0 sampler.set_alpha_to_one=true "
            "sampler.thresholding=false sampler.dynamic_thresholding_ratio=0.995 "
            "sampler.sample_max_value=1.0 sampler.timestep_spacing=trailing batch_size=8 "
            in entry["command"])
    # merged, not overwritten
    _evaluate(evaluated_run, cache, "n=8", "sampler=ddpm", "sampler.steps=3")
    entries = read_eval(evaluated_run)
    assert sorted((e["sampler"], e["steps"], e["n"]) for e in entries.values()) == [
        ("ddim", 2, 16), ("ddim", 4, 16), ("ddpm", 3, 8)]
    ddpm = next(k for k, e in entries.items() if e["sampler"] == "ddpm")
    assert " batch_size=8 " in ddpm  # its step noise is drawn batch by batch
    # the training's records (its periodic FIDs among them) stay the training's alone: the
    # command's evaluations live in eval.json, not in metrics.jsonl
    assert [r["step"] for r in read_metrics(evaluated_run / "metrics.jsonl")
            if "eval/fid" in r] == [2, 4]
    assert not [r for r in read_metrics(evaluated_run / "metrics.jsonl") if "eval/sampler" in r]
    assert (evaluated_run / "figures" / "fid_vs_steps.png").stat().st_size > 0


def test_eval_entries_keep_every_protocol_and_repeat_exactly(evaluated_run, cache, tmp_path):
    """Evaluations differing only in eta, or only in the checkpoint, are two entries each
    (they used to share ``ddim-2-n8`` and overwrite each other), and an entry's command,
    parsed back, evaluates the same protocol to the same score."""
    run_dir = tmp_path / "run"
    shutil.copytree(evaluated_run, run_dir)
    (run_dir / "eval.json").unlink(missing_ok=True)
    older = run_dir / "checkpoints" / "step_00000002.pt"
    for overrides in (["sampler.eta=0"], ["sampler.eta=1"],
                      ["sampler.eta=0", f"checkpoint={older}"]):
        _evaluate(run_dir, cache, "n=8", "sampler=ddim", "sampler.steps=2", "plot=false",
                  *overrides)
    entries = read_eval(run_dir)
    assert sorted((e["eta"], e["step"]) for e in entries.values()) == [(0, 2), (0, 4), (1, 4)]
    stochastic = next(e for e in entries.values() if e["eta"] == 1)
    args = shlex.split(stochastic["command"])
    assert args[:3] == ["python", "-m", "diffusion.evaluate"]
    cfg = compose_config([*_list_overrides(args[3:]), f"metrics.cache_dir={cache}",
                          "device=cpu", "plot=false"], config_name="evaluate")
    assert (cfg.sampler.eta, cfg.batch_size, cfg.metrics.seed, cfg.checkpoint) == (
        1, 8, 0, str(run_dir / "checkpoints" / "step_00000004.pt"))
    [again] = evaluate(cfg)
    assert read_eval(run_dir).keys() == entries.keys()  # the same protocol, the same key
    assert again.fid == pytest.approx(stochastic["fid"], rel=1e-6)


class _Wrapped(torch.nn.Module):
    """A model behind a wrapper without ``num_classes``; records the labels it is given."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.labels = model, []

    def forward(self, x, t, y=None):
        self.labels.append(None if y is None else tuple(y.tolist()))
        return self.inner(x, t, y)


def test_conditional_run_is_scored_with_balanced_labels(tmp_path, tiny_mnist_root, scorer):
    """The labels reach the model, 0..K-1 in turn over all n (not restarting per batch),
    also when the model is wrapped: the pipeline states num_classes instead of FID guessing
    it with getattr and falling back to the untrained null label."""
    from diffusion.sampling.pipeline import DiffusionPipeline

    run_dir, _ = run_training(tmp_path, tiny_mnist_root, "model=basic", "model.base_channels=8",
                              "model.num_classes=10", "trainer.sample_every=0",
                              "trainer.val_every=0")
    trained = DiffusionPipeline.from_run(run_dir, device="cpu")
    assert trained.num_classes == 10
    wrapped = _Wrapped(trained.model)
    pipe = DiffusionPipeline(wrapped, trained.scheduler, trained.sample_shape, device="cpu",
                             num_classes=trained.num_classes)
    result = scorer.score_pipeline(pipe, 12, "ddim", steps=2, batch_size=5)
    assert result.n == 12 and result.fid > 0
    assert set(wrapped.labels) == {(0, 1, 2, 3, 4), (5, 6, 7, 8, 9), (0, 1)}
    assert len(wrapped.labels) == 3 * 2  # three batches, two steps each


@pytest.mark.slow
def test_short_training_beats_no_training(tmp_path, tiny_mnist_root, cache):
    """A basic UNet trained for a few hundred steps samples closer to the data than at step 1."""
    from diffusion.sampling.pipeline import DiffusionPipeline

    common = ("model=basic", "model.base_channels=16", "optimizer.lr=2e-3",
              "trainer.ema_decay=0.99", "trainer.sample_every=0", "trainer.val_every=0",
              "trainer.log_every=50", "lr_scheduler.warmup_steps=20")
    scores = {}
    for steps in (1, 400):
        run_dir, _ = run_training(tmp_path, tiny_mnist_root, *common,
                                  f"trainer.max_steps={steps}", f"trainer.ckpt_every={steps}",
                                  name=f"steps{steps}")
        as_hydra_writes_it(run_dir)
        pipe = DiffusionPipeline.from_run(run_dir, device="cpu")
        scorer = FidScorer(load_feature_network("mnist", root=tiny_mnist_root, cache_dir=cache,
                                                progress=False, epochs=EPOCHS),
                           DataRef("mnist", root=str(tiny_mnist_root)), kid=False, seed=0)
        scores[steps] = scorer.score_pipeline(pipe, 32, "ddim", 20).fid
    assert scores[400] < scores[1] / 2, scores


def test_report_keeps_spacings_apart_and_shows_the_fid_during_training(
        evaluated_run, cache, tmp_path):
    """A run scored with leading and trailing DDIM gets one column per spacing (they used to
    share ``ddim-2`` and one hid the other), and the trainer's periodic FIDs make a table by
    training step that leaves diffusion.evaluate's records out."""
    from diffusion.reporting.sweeps import find_jobs, write_report

    run_dir = tmp_path / "runs" / "0"
    shutil.copytree(evaluated_run, run_dir)
    (run_dir / "eval.json").unlink(missing_ok=True)
    scored = len([r for r in read_metrics(run_dir / "metrics.jsonl") if "eval/fid" in r])
    for spacing in ("leading", "trailing"):
        _evaluate(run_dir, cache, "n=8", "sampler=ddim", "sampler.steps=2", "plot=false",
                  f"sampler.timestep_spacing={spacing}")
    _evaluate(run_dir, cache, "n=8", "sampler=ddpm", "sampler.steps=3", "plot=false")
    entries = read_eval(run_dir)
    fid = {e["timestep_spacing"]: e["fid"] for e in entries.values() if e["sampler"] == "ddim"}
    assert fid["leading"] != fid["trailing"]
    readme = write_report([run_dir], tmp_path / "out").read_text()
    header = next(line for line in readme.splitlines() if line.startswith("| job"))
    assert "FID ddim leading-2 (n=8)" in header and "FID ddim trailing-2 (n=8)" in header
    assert "FID ddpm-3 (n=8)" in header  # one spacing: not named
    row = next(line for line in readme.splitlines() if line.startswith("| runs/0 ")).split(" | ")
    names = header.split(" | ")
    for spacing in ("leading", "trailing"):
        assert row[names.index(f"FID ddim {spacing}-2 (n=8)")] == format_score(fid[spacing])
    logged = [r for r in read_metrics(run_dir / "metrics.jsonl") if "eval/fid" in r]
    assert len(logged) == scored == 2  # the trainer's two: evaluate writes eval.json alone
    [job] = find_jobs([run_dir])
    assert [r["step"] for r in job.periodic_fids] == [2, 4]
    section = readme.split("### FID by training step", 1)[1]
    table = [line for line in section.splitlines() if line.startswith("| ")]
    assert table[0] == "| job | sampled as | step 2 | step 4 |"
    assert table[2].startswith("| basic-mnist | ddim-2 (trailing), n=8 |")  # not a date
    assert table[-1].startswith("| data floor | real train images |")
    assert (tmp_path / "out" / "fid_during_training.png").stat().st_size > 0


def test_evaluate_scores_the_continuous_time_samplers(evaluated_run, cache):
    """pc, ald and rk45 over a DDPM run's table: one entry each, no timestep spacing (their
    times are evenly spaced, or the solver's own)."""
    results = _evaluate(evaluated_run, cache, "n=8", "sampler=pc", "sampler.steps=2")
    results += _evaluate(evaluated_run, cache, "n=8", "sampler=ald", "sampler.steps=2")
    results += _evaluate(evaluated_run, cache, "n=8", "sampler=rk45", "sampler.rtol=1e-2",
                         "sampler.atol=1e-2")
    assert [(r.sampler, r.steps) for r in results] == [("pc", 2), ("ald", 2), ("rk45", 1000)]
    entries = [e for e in read_eval(evaluated_run).values()
               if e["sampler"] in ("pc", "ald", "rk45")]
    assert len(entries) == 3 and all(e["timestep_spacing"] is None for e in entries)
    # the adaptive solver's NFE is measured (one batch of 8: a whole count), the cap its steps
    [adaptive] = [e for e in entries if e["sampler"] == "rk45"]
    assert 2 <= adaptive["nfe"] < 1000 and adaptive["nfe"] == int(adaptive["nfe"])
    assert all("nfe" not in e for e in entries if e is not adaptive)
    assert all(e["fid"] > e["floor"] for e in entries)
    assert any("sampler=pc sampler.steps=2 " in e["command"] for e in entries)
