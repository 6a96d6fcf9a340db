"""``python -m diffusion.bench``: a tiny run end to end, and the diffusers counterpart's sizing."""

from __future__ import annotations

import json
import statistics

import pytest
import torch
from omegaconf import OmegaConf

from diffusion.commands.bench import _hydra_argv, bench
from diffusion.commands.benchmarks.ours import bench_samplers
from diffusion.config.build import build_model
from diffusion.config.sampler import named_sampler
from diffusion.errors import ConfigError
from diffusion.schedulers import DDPMScheduler, NoiseScheduler
from hydra_utils import compose_config
from test_records import absolute_paths

pytest.importorskip("diffusers")

REPEATS, SAMPLE_N, SAMPLE_STEPS = 2, 2, 2
SAMPLERS = ["ddim", "dpmpp_2m", "euler_a", "heun"]
TINY = ["model.base_channels=8", "model.norm_groups=4", "model.num_res_blocks=1",
        "data.batch_size=4", "data.num_workers=0", "trainer.device=cpu", "bench.warmup=1",
        "bench.min_time_s=0", f"bench.repeats={REPEATS}", f"bench.sample_n={SAMPLE_N}",
        f"bench.sample_steps={SAMPLE_STEPS}",
        "bench.num_threads=1"]


def assert_rates_follow_the_timings(result: dict, batch: int) -> None:
    """Each rate is its operation's images (or image-steps) over the median of its timed
    repeats, in the units its name says."""
    timings = result["timings"]
    for op, timing in timings.items():
        assert len(timing["repeats_s"]) == REPEATS and timing["calls_per_repeat"] >= 1, op
        assert timing["median_s"] == pytest.approx(statistics.median(timing["repeats_s"])), op
        assert min(timing["repeats_s"]) <= timing["median_s"] <= max(timing["repeats_s"]), op
    assert result["train_images_per_s"] == pytest.approx(batch / timings["train"]["median_s"])
    samplers = [op.removeprefix("sample:") for op in timings if op.startswith("sample:")]
    for name in samplers:
        assert result[f"sample_{name}_images_steps_per_s"] == pytest.approx(
            SAMPLE_N * SAMPLE_STEPS / timings[f"sample:{name}"]["median_s"])
    assert result["sample_images_steps_per_s"] == result[
        f"sample_{samplers[0]}_images_steps_per_s"]
    assert result["data_images_per_s"] == pytest.approx(batch / timings["data"]["median_s"])
    assert result["ema_update_ms"] == pytest.approx(1000 * timings["ema"]["median_s"])
    assert result["params_m"] == pytest.approx(result["params"] / 1e6)


def test_tiny_bench_side_by_side_writes_table_and_json(tmp_path, tiny_mnist_root, capsys,
                                                       monkeypatch):
    monkeypatch.setenv("DIFFUSION_DATA", str(tiny_mnist_root))
    out = tmp_path / "bench.json"
    overrides = [f"paths.data_dir={tiny_mnist_root}", "vs=diffusers", "bench.flops=true",
                 f"bench.sampler=[{','.join(SAMPLERS)}]", f"bench.out={out}"]
    cfg = compose_config([*TINY, *overrides], config_name="bench")
    threads = torch.get_num_threads()
    bench(cfg, " ".join(["python -m diffusion.bench", *overrides]))
    assert torch.get_num_threads() == threads  # the thread setting does not leak
    text = out.read_text()
    record = json.loads(text)
    assert record["device"] == "cpu" and record["num_threads"] == 1
    # the record names the data root by its variable and no folder of this machine
    assert record["data_source"] == "mnist train split under $DIFFUSION_DATA"
    assert record["command"] == ("python -m diffusion.bench paths.data_dir=$DIFFUSION_DATA "
                                 "vs=diffusers bench.flops=true "
                                 f"bench.sampler=[{','.join(SAMPLERS)}] bench.out=<out>")
    assert record["samplers"] == SAMPLERS
    assert record["config"]["data"]["root"] == record["config"]["paths"]["data_dir"]
    assert record["config"]["data"]["root"] == "$DIFFUSION_DATA"
    assert absolute_paths(text) == []
    results = record["results"]
    for side in ("ours", "diffusers"):
        result = results[side]
        assert_rates_follow_the_timings(result, record["batch_size"])
        # a training step is a forward and a backward (about twice the forward) per image
        ratio = result["train_gflop_per_image"] / result["sample_gflop_per_image_step"]
        assert 2.5 < ratio <= 3.0, (side, ratio)
        assert result["train_tflop_per_s"] == pytest.approx(
            result["train_gflop_per_image"] * result["train_images_per_s"] / 1000)
        assert result["train_peak_mib"] >= 0 and "mfu_percent" not in result  # no MFU on CPU
    ours, theirs = results["ours"]["params"], results["diffusers"]["params"]
    assert abs(theirs / ours - 1) <= 0.05
    # networks of the same size cost about the same FLOPs per image
    assert results["diffusers"]["train_gflop_per_image"] == pytest.approx(
        results["ours"]["train_gflop_per_image"], rel=0.5)
    ratios = record["ratios_ours_over_diffusers"]
    keys = [f"sample_{name}_images_steps_per_s" for name in SAMPLERS]
    for key in ("train_images_per_s", "sample_images_steps_per_s", "ema_update_ms", *keys):
        assert ratios[key] == pytest.approx(results["ours"][key] / results["diffusers"][key])
    table = capsys.readouterr().out
    for text in ("train images/s", "ours/diffusers", str(out),
                 *(f"sample images*steps/s ({name})" for name in SAMPLERS)):
        assert text in table


def test_missing_data_falls_back_to_synthetic_files_and_says_so(tmp_path):
    cfg = compose_config([*TINY, f"paths.data_dir={tmp_path / 'none'}", "data.download=false",
                          f"bench.out={tmp_path / 'b.json'}"], config_name="bench")
    record = bench(cfg)
    assert record["data_source"].startswith("synthetic MNIST")
    assert "diffusers" not in record["results"]
    assert_rates_follow_the_timings(record["results"]["ours"], record["batch_size"])
    with pytest.raises(ConfigError, match="bench.data"):
        bench(compose_config([*TINY, "bench.data=sometimes"], config_name="bench"))


def test_bench_times_a_whole_fid(tmp_path, tiny_mnist_root, capsys, monkeypatch):
    """``bench.fid_n``: one FID of n images (5 images in batches of 2: a short last batch)."""
    monkeypatch.delenv("DIFFUSION_DATA", raising=False)
    out = tmp_path / "bench.json"
    cfg = compose_config([*TINY, f"paths.data_dir={tiny_mnist_root}", "bench.fid_n=5",
                          "bench.fid_batch=2", "bench.fid_steps=2", "metrics.feature_epochs=2",
                          f"metrics.cache_dir={tmp_path / 'features'}", "metrics.kid_subset_size=4",
                          f"bench.out={out}"], config_name="bench")
    bench(cfg)
    record = json.loads(out.read_text())
    fid = record["fid_eval"]
    assert absolute_paths(out.read_text()) == []
    assert record["data_source"] == "mnist train split under <data>"
    assert record["config"]["metrics"]["cache_dir"] == "<path>"
    assert (fid["n"], fid["steps"], fid["batch_size"], fid["sampler"]) == (5, 2, 2, "ddim")
    assert fid["images_per_s"] == pytest.approx(5 / fid["seconds"])
    assert fid["image_steps_per_s"] == pytest.approx(5 * 2 / fid["seconds"])
    assert fid["feature_id"].startswith("mnist-lenet@") and fid["reference"] == "mnist/test"
    assert "FID of 5 images (ddim-2, batch 2" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="bench.fid_n must be 0 .off. or at least 2"):
        bench(compose_config([*TINY, f"paths.data_dir={tiny_mnist_root}", "bench.fid_n=1",
                              f"bench.out={out}"], config_name="bench"))
    for override, message in (
            ("bench.num_threads=0", r"^bench.num_threads must be an integer >= 1 \(or null: "
                                    r"torch's default\); got 0\.$"),
            ("bench.repeats=2.5", r"^bench.repeats must be an integer >= 1; got 2.5\.$")):
        with pytest.raises(ConfigError, match=message):
            bench(compose_config([*TINY, f"paths.data_dir={tiny_mnist_root}", override,
                                  f"bench.out={out}"], config_name="bench"))


@pytest.mark.parametrize("name", sorted(NoiseScheduler.SAMPLERS))
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_each_sampler_is_paired_with_diffusers_scheduler_of_its_name_and_steps(name, schedule):
    """The diffusers side runs the scheduler of our sampler's class name with its options and
    spacing: the same timesteps, model evaluations and starting noise scale."""
    import diffusers

    from diffusion.commands.benchmarks.diffusers_side import BETA_SCHEDULES, diffusers_scheduler

    ours = named_sampler(name).build(DDPMScheduler(beta_schedule=schedule))
    noise = diffusers.DDPMScheduler(beta_schedule=BETA_SCHEDULES[schedule]).config
    theirs = diffusers_scheduler(named_sampler(name), noise, "leading")
    assert type(theirs).__name__ == type(ours).__name__
    torch.testing.assert_close(theirs.alphas_cumprod.double(), ours.alphas_cumprod, rtol=1e-4,
                               atol=0)
    for key, value in named_sampler(name).options.items():
        assert theirs.config.get(key, value) == value, key  # eta: DDIM's step argument
    assert theirs.config.timestep_spacing == ours.config["timestep_spacing"] == "trailing"
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    torch.testing.assert_close(ours.timesteps.double(), theirs.timesteps.double())
    assert float(ours.init_noise_sigma) == pytest.approx(float(theirs.init_noise_sigma), rel=1e-5)


def test_bench_sampler_names_are_checked():
    with pytest.raises(ConfigError, match=r"^bench.sampler must be one of ald, corrupt, ddim, "
                                          r"ddpm, .*; got 'dpm'.$"):
        bench_samplers(OmegaConf.create({"sampler": ["ddim", "dpm"]}))
    with pytest.raises(ConfigError, match="a list of distinct names"):
        bench_samplers(OmegaConf.create({"sampler": ["ddim", "ddim"]}))
    assert [s.name for s in bench_samplers(OmegaConf.create({"sampler": "heun"}))] == ["heun"]


def _sizes(overrides: list[str]) -> tuple[int, int, dict]:
    from diffusion.commands.benchmarks.diffusers_side import unet2d_config

    cfg = compose_config(overrides, config_name="bench")
    with torch.device("meta"):
        ours = sum(p.numel() for p in build_model(cfg).parameters())
    config, theirs = unet2d_config(cfg.model, cfg.data.channels, cfg.data.image_size, ours)
    return ours, theirs, config


def test_ddpm_cifar10_network_maps_to_google_ddpm_cifar10_32():
    ours, theirs, config = _sizes(["data=flowers102", "data.image_size=32",
                                   "data.center_crop=true", "model.base_channels=128",
                                   "model.channel_mult=[1,2,2,2]",
                                   "model.attention_resolutions=[16]"])
    assert 35.6e6 < ours < 35.8e6 and abs(theirs / ours - 1) <= 0.05
    assert config["block_out_channels"] == (128, 256, 256, 256)
    assert config["down_block_types"][1] == "AttnDownBlock2D"
    assert config["attention_head_dim"] is None and config["downsample_padding"] == 0


@pytest.mark.parametrize("overrides", [["experiment=mnist"], ["model=unet"]])
def test_diffusers_counterpart_lands_within_five_percent(overrides):
    ours, theirs, config = _sizes(overrides)
    assert abs(theirs / ours - 1) <= 0.05, (ours, theirs, config)
    assert config["sample_size"] % 2 ** (len(config["block_out_channels"]) - 1) == 0


def test_vs_flag_spellings():
    assert _hydra_argv(["--vs", "diffusers", "data=mnist"]) == ["vs=diffusers", "data=mnist"]
    assert _hydra_argv(["--vs=diffusers"]) == ["vs=diffusers"]
    with pytest.raises(ConfigError, match="vs must be"):
        bench(compose_config([*TINY, "vs=pytorch"], config_name="bench"))


def test_a_continuous_time_sampler_has_no_diffusers_counterpart_to_bench_against():
    from diffusion.commands.benchmarks.diffusers_side import diffusers_scheduler

    with pytest.raises(ConfigError, match=r"^diffusers has no counterpart of sampler=pc to "
                                          r"bench it against: choose bench.sampler among ddim, "
                                          r"ddpm, .*, heun.$"):
        diffusers_scheduler(named_sampler("pc"), DDPMScheduler().config, "leading")
