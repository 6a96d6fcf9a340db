"""``python -m diffusion.bench bench.guidance_scale=w``: guided sampling of B images timed
against unguided sampling of 2B, in turns."""

from __future__ import annotations

import pytest

from diffusion.commands.bench import bench
from diffusion.errors import ConfigError
from hydra_utils import compose_config
from test_bench import TINY


def test_bench_times_guided_against_unguided_sampling(tmp_path, capsys):
    common = [*TINY, f"paths.data_dir={tmp_path / 'none'}", "data.download=false",
              "bench.guidance_scale=3", f"bench.out={tmp_path / 'b.json'}"]
    record = bench(compose_config([*common, "model.num_classes=10", "bench.sample_n=4"],
                                  config_name="bench"))
    guided = record["guidance"]
    assert (guided["guided_images"], guided["forward_batch"], guided["guidance_scale"]) == (
        2, 4, 3.0)
    assert guided["guided_over_unguided"] == pytest.approx(guided["guided_s"]
                                                           / guided["unguided_s"])
    assert guided["guided_forward_image_steps_per_s"] == pytest.approx(
        4 * guided["steps"] / guided["guided_s"])
    assert len(guided["timings"]["guided"]["repeats_s"]) == 2
    assert "classifier-free guidance (w=3, ddim-2): 2 guided images" in capsys.readouterr().out
    with pytest.raises(ConfigError, match=r"^bench.guidance_scale needs a class-conditional "
                                          r"model: add model.num_classes=10\.$"):
        bench(compose_config(common, config_name="bench"))
    with pytest.raises(ConfigError, match=r"bench.sample_n must be even; got 3\.$"):
        bench(compose_config([*common, "model.num_classes=10", "bench.sample_n=3"],
                             config_name="bench"))
