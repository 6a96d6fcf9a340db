"""``python -m diffusion.bench``: a tiny run end to end, and the diffusers counterpart's sizing."""

from __future__ import annotations

import json

import pytest
import torch

from diffusion.bench import _hydra_argv, bench
from diffusion.builders import build_model
from diffusion.training.config import ConfigError
from hydra_utils import compose_config

pytest.importorskip("diffusers")

TINY = ["model.base_channels=8", "model.norm_groups=4", "model.num_res_blocks=1",
        "data.batch_size=4", "data.num_workers=0", "trainer.device=cpu", "bench.warmup=1",
        "bench.repeats=2", "bench.min_time_s=0", "bench.sample_n=2", "bench.sample_steps=2",
        "bench.num_threads=1"]


def test_tiny_bench_side_by_side_writes_table_and_json(tmp_path, tiny_mnist_root, capsys):
    out = tmp_path / "bench.json"
    cfg = compose_config([*TINY, f"paths.data_dir={tiny_mnist_root}", "vs=diffusers",
                          "bench.flops=true", f"bench.out={out}"], config_name="bench")
    threads = torch.get_num_threads()
    bench(cfg)
    assert torch.get_num_threads() == threads  # the thread setting does not leak
    record = json.loads(out.read_text())
    assert record["device"] == "cpu" and record["num_threads"] == 1
    assert "mnist train split" in record["data_source"]
    for side in ("ours", "diffusers"):
        result = record["results"][side]
        for key in ("train_images_per_s", "sample_images_steps_per_s", "data_images_per_s",
                    "ema_update_ms", "train_gflop_per_image", "train_tflop_per_s"):
            assert result[key] > 0, (side, key)
        assert result["train_peak_mib"] >= 0 and "mfu_percent" not in result  # no MFU on CPU
    ours, theirs = record["results"]["ours"]["params"], record["results"]["diffusers"]["params"]
    assert abs(theirs / ours - 1) <= 0.05
    assert record["ratios_ours_over_diffusers"]["train_images_per_s"] > 0
    table = capsys.readouterr().out
    for text in ("train images/s", "sample images*steps/s", "ours/diffusers", str(out)):
        assert text in table


def test_missing_data_falls_back_to_synthetic_files_and_says_so(tmp_path):
    cfg = compose_config([*TINY, f"paths.data_dir={tmp_path / 'none'}", "data.download=false",
                          f"bench.out={tmp_path / 'b.json'}"], config_name="bench")
    record = bench(cfg)
    assert record["data_source"].startswith("synthetic MNIST")
    assert "diffusers" not in record["results"]
    assert record["results"]["ours"]["data_images_per_s"] > 0
    with pytest.raises(ConfigError, match="bench.data"):
        bench(compose_config([*TINY, "bench.data=sometimes"], config_name="bench"))


def test_bench_times_a_whole_fid(tmp_path, tiny_mnist_root, capsys):
    """``bench.fid_n``: one FID of n images (5 images in batches of 2: a short last batch)."""
    out = tmp_path / "bench.json"
    cfg = compose_config([*TINY, f"paths.data_dir={tiny_mnist_root}", "bench.fid_n=5",
                          "bench.fid_batch=2", "bench.fid_steps=2", "metrics.feature_epochs=2",
                          f"metrics.cache_dir={tmp_path / 'features'}", "metrics.kid_subset_size=4",
                          f"bench.out={out}"], config_name="bench")
    bench(cfg)
    fid = json.loads(out.read_text())["fid_eval"]
    assert (fid["n"], fid["steps"], fid["batch_size"], fid["sampler"]) == (5, 2, 2, "ddim")
    assert fid["seconds"] > 0 and fid["images_per_s"] == pytest.approx(5 / fid["seconds"])
    assert fid["feature_id"].startswith("mnist-lenet@") and fid["reference"] == "mnist/test"
    assert "FID of 5 images (ddim-2, batch 2" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="bench.fid_n must be 0 .off. or at least 2"):
        bench(compose_config([*TINY, f"paths.data_dir={tiny_mnist_root}", "bench.fid_n=1",
                              f"bench.out={out}"], config_name="bench"))


def _sizes(overrides: list[str]) -> tuple[int, int, dict]:
    from diffusion.benchmarks.diffusers_side import unet2d_config

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
