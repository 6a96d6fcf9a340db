"""ControlNet on the attention UNet and its control images: the zero-initialised network is the
base exactly at step 0 (and at control_scale 0 always), only the copy trains, the control
reaches the output once the zero convolutions move, and the control images are computed as
stated (Canny and Sobel edges, the Gaussian low-pass, the mask's rectangle)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from diffusion.editing.sources import read_input
from diffusion.errors import ConfigError
from diffusion.models.control import ControlImages, grey
from diffusion.models.controlnet import ControlNet
from diffusion.models.unet_attn import AttentionUNet
from diffusion.reporting.figures import save_grid


def base_unet(size: int = 16, **options) -> AttentionUNet:
    torch.manual_seed(0)
    net = AttentionUNet(in_channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                        norm_groups=4, image_size=size, **options)
    with torch.no_grad():  # a trained network's output convolution is not zero
        net.out[-1].weight.normal_(0, 0.1)
    return net.eval()


def batch(size: int = 16, n: int = 3):
    g = torch.Generator().manual_seed(2)
    return (torch.randn(n, 1, size, size, generator=g), torch.tensor([4, 250, 999])[:n],
            torch.rand(n, 1, size, size, generator=g) * 2 - 1)


@pytest.mark.parametrize("size", [16, 15])  # 15: padded to a multiple of 2, then cropped
def test_the_zero_initialised_controlnet_is_the_base_exactly(size):
    base = base_unet(size)
    x, t, control = batch(size)
    with torch.no_grad():
        expected = base(x, t)
        net = ControlNet(base, control_channels=1).eval()
        assert torch.equal(net(x, t, control=control), expected)
    trainable = {n.split(".")[0] for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"time_embed", "conv_in", "down", "middle", "hint", "zero_skips",
                         "zero_middle"}
    assert not any(p.requires_grad for p in net.base.parameters())


def test_the_control_acts_once_trained_and_scales():
    net = ControlNet(base_unet(), control_channels=1)
    x, t, control = batch()
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    frozen = {k: v.clone() for k, v in net.base.state_dict().items()}
    net.train()
    for _ in range(3):
        optimizer.zero_grad()
        (net(x, t, control=control) - control).pow(2).mean().backward()
        optimizer.step()
    assert all(torch.equal(v, net.base.state_dict()[k]) for k, v in frozen.items())
    assert not net.base.training and net.training
    net.eval()
    with torch.no_grad():
        plain = net.base(x, t)
        assert torch.equal(net(x, t, control=control, control_scale=0.0), plain)
        full = net(x, t, control=control)
        other = net(x, t, control=-control)
        assert float((full - plain).abs().max()) > 1e-4
        assert float((full - other).abs().max()) > 1e-5  # the output depends on the control
    with pytest.raises(ValueError, match="pass control of shape"):
        net(x, t)


def test_edges_are_cannys_and_sobels():
    import kornia

    g = torch.Generator().manual_seed(0)
    images = torch.zeros(2, 3, 24, 24)
    images[:, :, 6:18, 6:18] = 1.0  # a bright square on black: edges on its border
    images = images + 0.01 * torch.randn(images.shape, generator=g)
    edges = ControlImages("edges")(images)
    assert edges.shape == (2, 1, 24, 24) and set(edges.unique().tolist()) <= {-1.0, 1.0}
    _, expected = kornia.filters.canny(grey(images), 0.1, 0.2, (7, 7), (1.0, 1.0))
    torch.testing.assert_close(edges, expected * 2 - 1)
    on = edges[0, 0] > 0
    assert on[6, 10] or on[5, 10]  # the top border
    assert not on[12, 12] and not on[1, 1]  # the flat inside and outside
    sobel = ControlImages("edges", method="sobel", high=0.3)(images)
    torch.testing.assert_close(sobel, (kornia.filters.sobel(grey(images)) > 0.3).float() * 2 - 1)
    assert float(grey(torch.ones(1, 3, 2, 2)).min()) == pytest.approx(1.0)


def test_blur_is_a_gaussian_low_pass():
    images = torch.zeros(1, 1, 21, 21)
    images[0, 0, 10, 10] = 1.0  # an impulse: the blur is the kernel itself
    blurred = ControlImages("blur", sigma=1.5)(images)
    r = torch.arange(21.0) - 10
    kernel = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5**2))
    kernel = torch.where((r[:, None].abs() <= 5) & (r[None, :].abs() <= 5), kernel, 0)
    torch.testing.assert_close(blurred[0, 0], kernel / kernel.sum(), atol=1e-6, rtol=0)
    assert ControlImages("blur").channels(3) == 3


def test_the_mask_keeps_one_rectangle_placed_by_the_index():
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    control = ControlImages("mask", fraction=0.5)(images, index=torch.tensor([0, 5, 15]))
    assert control.shape == (3, 4, 16, 16)
    keep = (control[:, 3:] + 1) / 2
    assert keep.sum((1, 2, 3)).tolist() == [64.0, 64.0, 64.0]  # 8 x 8 of 16 x 16
    assert keep[0, 0, 0, 0] == 1 and keep[0, 0, 8, 8] == 0  # index 0: the top-left corner
    assert keep[2, 0, 15, 15] == 1 and keep[2, 0, 7, 7] == 0  # index 15: the bottom-right
    torch.testing.assert_close(control[:, :3], images * keep)
    again = ControlImages("mask", fraction=0.5)(images, index=torch.tensor([0, 5, 15]))
    assert torch.equal(again, control)


def test_bad_settings_are_one_sentence():
    with pytest.raises(ConfigError, match="control.kind"):
        ControlImages("depth")
    with pytest.raises(ConfigError, match="must not exceed control.high"):
        ControlImages("edges", low=0.5, high=0.2)
    with pytest.raises(ValueError, match="adapts an AttentionUNet"):
        ControlNet(torch.nn.Conv2d(1, 1, 1), control_channels=1)


def test_a_controlnet_run_trains_saves_its_part_and_samples(tmp_path, tiny_mnist_root):

    from diffusion.sampling.pipeline import DiffusionPipeline
    from diffusion.training import checkpoint as ckpt
    from test_train import SMALL_MODELS, run_training

    base, _ = run_training(tmp_path, tiny_mnist_root, "model=unet_attn",
                           *SMALL_MODELS["unet_attn"], name="base")
    run, summary = run_training(tmp_path, tiny_mnist_root, f"init_from={base}", "control=edges",
                                "trainer.sample_every=4", name="control")
    assert summary["step"] == 4
    saved = OmegaConf.load(run / "config.yaml")
    assert saved.control.kind == "edges" and saved.control.base.sha256 == ckpt.file_sha256(
        ckpt.latest_checkpoint(base / "checkpoints"))
    state = ckpt.load(ckpt.latest_checkpoint(run / "checkpoints"))
    assert state["model"] and not any(key.startswith("base.") for key in state["model"])
    assert (run / "samples" / "step_00000004.png").is_file()  # control images above samples
    pipe = DiffusionPipeline.from_run(run, device="cpu")
    plain = DiffusionPipeline.from_run(base, device="cpu")
    images = torch.rand(3, 1, 28, 28) * 2 - 1
    control = pipe.control(images)
    kwargs = {"steps": 2, "seed": 0, "output_type": "pt"}
    off = pipe(3, control=control, control_scale=0.0, **kwargs).images
    assert torch.equal(off, plain(3, **kwargs).images)  # scale 0: the base model exactly
    on = pipe(3, control=control, **kwargs).images
    assert on.shape == (3, 1, 28, 28) and torch.isfinite(on).all()
    with pytest.raises(ConfigError, match="this run is a ControlNet"):
        pipe(3, **kwargs)
    with pytest.raises(ConfigError, match="control= is for a ControlNet run"):
        plain(3, control=control, **kwargs)
    # the sample command: the test split's controls, at two scales
    from diffusion.commands.sample import sample
    from hydra_utils import compose_config

    for scale in (0.0, 1.0):
        written = sample(compose_config([f"run={run}", "sampler.steps=2", "n=4", "device=cpu",
                                         "control_image=test", f"control_scale={scale}",
                                         "save_tensors=true",
                                         f"out={tmp_path / f'c{scale:g}.png'}"],
                                        config_name="sample"))
        assert written["control"].is_file()
        # the images the controls came from: the test split's first four, as one grid
        sources = read_input("test", 4, 0, OmegaConf.load(run / "config.yaml").data)
        expected = save_grid(sources, tmp_path / "expected_sources.png")
        assert written["control_source"].read_bytes() == expected.read_bytes()
    base_grid = sample(compose_config([f"run={base}", "sampler.steps=2", "n=4", "device=cpu",
                                       "save_tensors=true", f"out={tmp_path / 'base.png'}"],
                                      config_name="sample"))
    assert torch.equal(torch.load(tmp_path / "c0.pt"), torch.load(base_grid["tensors"]))
    with pytest.raises(ConfigError, match="pass control_image=test"):
        sample(compose_config([f"run={run}", "n=2", "device=cpu"], config_name="sample"))
    with pytest.raises(ConfigError, match="control_image= is for a ControlNet run"):
        sample(compose_config([f"run={base}", "n=2", "control_image=test"],
                              config_name="sample"))
    # evaluate: FID and adherence at two scales; scale 0 scores the base model's own draws
    from diffusion.commands.evaluate import evaluate
    from diffusion.runs.records import read_eval
    from test_metrics import EPOCHS

    common = [f"metrics.cache_dir={tmp_path / 'features'}", f"metrics.feature_epochs={EPOCHS}",
              "metrics.kid_subset_size=8", "batch_size=8", "device=cpu", "n=16",
              "sampler.steps=2", "plot=false"]
    results = evaluate(compose_config([f"run={run}", "control_image=test",
                                       "control_scale=[0,1]", *common],
                                      config_name="evaluate"))
    (plain_result,) = evaluate(compose_config([f"run={base}", *common],
                                              config_name="evaluate"))
    assert results[0].fid == pytest.approx(plain_result.fid, rel=1e-6)
    entries = sorted(read_eval(run).values(), key=lambda e: e["control_scale"])
    assert [e["control_scale"] for e in entries] == [0.0, 1.0]
    assert all(0 <= e["control_iou"] <= 1 for e in entries)
    assert "control_image=test" in entries[0]["command"]


def test_adherence_is_one_or_zero_for_the_source_itself():
    from diffusion.sampling.controlled import adherence

    images = torch.zeros(2, 1, 20, 20)
    images[:, :, 5:15, 5:15] = 1.0
    shifted = torch.roll(images, 3, dims=-1)
    index = torch.arange(2)
    edges = ControlImages("edges")
    given = edges(images)
    assert adherence(edges, images, given, index).tolist() == [1.0, 1.0]
    iou = adherence(edges, shifted, given, index)
    a, b = edges(shifted) > 0, given > 0
    expected = (a & b).flatten(1).sum(1) / (a | b).flatten(1).sum(1)
    torch.testing.assert_close(iou, expected.float())
    assert float(iou.max()) < 1
    for kind in ("blur", "mask"):
        control = ControlImages(kind)
        given = control(images, index)
        assert adherence(control, images, given, index).abs().max() < 1e-6
        assert float(adherence(control, shifted, given, index).min()) > 0


def test_a_controlnet_run_resumes_bit_exactly(tmp_path, tiny_mnist_root):
    from test_train import SMALL_MODELS, assert_same_state, run_training, straight_and_resumed

    base, _ = run_training(tmp_path, tiny_mnist_root, "model=unet_attn",
                           *SMALL_MODELS["unet_attn"], name="base")
    args = (f"init_from={base}", "control=mask", "trainer.ckpt_every=3", "trainer.keep_last=0",
            "trainer.sample_every=0")
    straight, resumed = straight_and_resumed(tmp_path, tiny_mnist_root, *args)
    assert_same_state(straight, resumed)


def test_guidance_and_every_kind_of_sampler_run_under_control():
    """Classifier-free guidance doubles the batch: the controls are repeated with it, and at
    scale 0 the guided draw is the base's guided draw exactly."""
    from diffusion.sampling.guidance import Guidance
    from diffusion.sampling.pipeline import DiffusionPipeline
    from diffusion.schedulers import DDPMScheduler

    base = base_unet(16, num_classes=3)
    net = ControlNet(base, control_channels=1).eval()
    with torch.no_grad():
        for name, parameter in net.named_parameters():
            if name.startswith("zero_"):
                parameter.normal_(0, 0.1)  # as training leaves them
    scheduler = DDPMScheduler(num_train_timesteps=50)
    pipe = DiffusionPipeline(net, scheduler, (1, 16, 16), device="cpu",
                             control=ControlImages("edges"))
    plain = DiffusionPipeline(base, scheduler, (1, 16, 16), device="cpu")
    control = ControlImages("edges")(torch.rand(4, 1, 16, 16) * 2 - 1)
    y = torch.tensor([0, 1, 2, 0])
    guided = {"guidance": Guidance(scale=3.0), "y": y, "steps": 3, "seed": 1,
              "output_type": "pt"}
    assert torch.equal(pipe(4, control=control, control_scale=0.0, **guided).images,
                       plain(4, **guided).images)
    for sampler in ("ddim", "ddpm", "dpmpp_2m", "euler_a", "heun"):
        out = pipe(4, control=control, sampler=sampler, **guided).images
        assert torch.isfinite(out).all(), sampler
        assert not torch.equal(out, plain(4, sampler=sampler, **guided).images), sampler
