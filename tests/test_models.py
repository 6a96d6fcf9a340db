"""Backbones: shapes, gradient flow, determinism, conditioning, sizes and argument checks."""

import importlib.util

import pytest
import torch

from diffusion.models import MODELS, AttentionUNet, BasicUNet, DiffusersUNet, UNet

# Small widths keep every test on CPU in well under a second per model.
SMALL = {
    BasicUNet: dict(base_channels=8, time_embed_dim=16),
    UNet: dict(base_channels=8, norm_groups=4),
    AttentionUNet: dict(base_channels=16, norm_groups=8, num_res_blocks=1, num_heads=2),
}
if importlib.util.find_spec("diffusers"):  # diffusers' UNet2DModel behind our interface
    SMALL[DiffusersUNet] = dict(base_channels=16, norm_groups=8, num_res_blocks=1, num_heads=2)
BACKBONES = list(SMALL)
DDPM_CIFAR10 = dict(
    in_channels=3,
    base_channels=128,
    channel_mult=(1, 2, 2, 2),
    num_res_blocks=2,
    attention_resolutions=(16,),
    num_heads=1,
    dropout=0.1,
    image_size=32,
)


def small(cls, **kwargs):
    return cls(**{**SMALL[cls], **kwargs})


def perturb_zero_init(model: torch.nn.Module) -> None:
    """Give the zero-initialised output convs weights, so every path carries gradient."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))


def name_of(cls):
    return cls.__name__


def assert_per_sample(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> None:
    """The output has the input's shape, follows each sample's own input and timestep, and
    never mixes samples: changing sample 0 moves only out[0]."""
    out = model(x, t)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    changed = x.clone()
    changed[0] = torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(2))
    moved = model(changed, t)
    assert not torch.allclose(moved[0], out[0])
    torch.testing.assert_close(moved[1:], out[1:])
    assert not torch.allclose(model(x, t.flip(0)), out)


def test_registry_names_the_four_backbones():
    assert MODELS == {"basic": BasicUNet, "unet": UNet, "unet_attn": AttentionUNet,
                      "diffusers_unet": DiffusersUNet}


@pytest.mark.parametrize("cls", BACKBONES, ids=name_of)
@pytest.mark.parametrize("channels,size", [(1, 28), (1, 32), (3, 32), (3, 64)])
def test_output_has_input_shape(cls, channels, size):
    model = small(cls, in_channels=channels, image_size=size).eval()
    perturb_zero_init(model)  # a zero output would pass any check on its values
    assert_per_sample(model, torch.randn(2, channels, size, size), torch.tensor([3, 700]))


@pytest.mark.parametrize("cls", BACKBONES, ids=name_of)
def test_odd_sizes_are_padded_and_cropped(cls):
    model = small(cls, channel_mult=(1, 2, 2, 2), out_channels=2)
    out = model(torch.randn(1, 1, 30, 17), 10)
    assert out.shape == (1, 2, 30, 17)


@pytest.mark.parametrize("cls", BACKBONES, ids=name_of)
def test_gradients_reach_every_parameter(cls):
    model = small(cls, num_classes=3)
    perturb_zero_init(model)
    x = torch.randn(4, 1, 28, 28)
    model(x, torch.tensor([1, 50, 400, 999]), torch.tensor([0, 1, 2, 3])).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_zero_initialised_network_trains_every_parameter():
    """DDPM's zero-init output convs block gradient at step one, not for good."""
    torch.manual_seed(0)
    model = small(AttentionUNet, num_classes=3, dropout=0.0)
    assert not model.out[-1].weight.any()
    x, t, y = torch.randn(4, 1, 28, 28), torch.tensor([1, 50, 400, 999]), torch.tensor([0, 1, 2, 3])
    assert model(x, t, y).abs().max() == 0  # the zero-init design's promise
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(3):  # output conv, then residual/attention outputs, then the rest
        opt.zero_grad()
        (model(x, t, y) - x).square().mean().backward()
        opt.step()
        if step == 0:
            assert model(x, t, y).abs().min() > 0  # one step gives every pixel an output
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert not unchanged
    out = model(x, t, y)
    assert not torch.allclose(model(x, t.flip(0), y), out)  # the time embedding is live
    assert not torch.allclose(model(x, t, y.flip(0)), out)  # and so is the label embedding


@pytest.mark.parametrize("cls", BACKBONES, ids=name_of)
def test_same_seed_same_output(cls):
    x = torch.randn(2, 1, 28, 28)

    def run():
        torch.manual_seed(123)
        model = small(cls, dropout=0.1) if cls is not BasicUNet else small(cls)
        perturb_zero_init(model)
        return model.train()(x, 10)  # dropout active: the seed governs it too

    assert torch.equal(run(), run())


@pytest.mark.parametrize("cls", BACKBONES, ids=name_of)
def test_scalar_and_batched_timesteps_agree(cls):
    model = small(cls).eval()
    perturb_zero_init(model)
    x = torch.randn(3, 1, 32, 32)
    ref = model(x, torch.full((3,), 17, dtype=torch.long))
    for t in (17, 17.0, torch.tensor(17), torch.tensor([17]), torch.full((3,), 17.0)):
        torch.testing.assert_close(model(x, t), ref)
    assert not torch.allclose(model(x, 500), ref)


@pytest.mark.parametrize("cls", BACKBONES, ids=name_of)
def test_class_label_changes_the_output(cls):
    model = small(cls, num_classes=10).eval()
    perturb_zero_init(model)
    x = torch.randn(2, 1, 28, 28)
    uncond = model(x, 5)
    cond = model(x, 5, torch.tensor([3, 7]))
    assert not torch.allclose(cond, uncond)
    # y=None is the "null" label num_classes, the one classifier-free guidance drops to.
    torch.testing.assert_close(model(x, 5, torch.tensor([10, 10])), uncond)


@pytest.mark.parametrize("cls", BACKBONES, ids=name_of)
def test_labels_without_num_classes_are_refused(cls):
    with pytest.raises(ValueError, match="num_classes"):
        small(cls)(torch.randn(1, 1, 28, 28), 5, torch.tensor([1]))


@pytest.mark.parametrize("cls", BACKBONES, ids=name_of)
def test_channels_last_gives_the_same_output(cls):
    model = small(cls).eval()
    perturb_zero_init(model)
    x = torch.randn(2, 1, 32, 32)
    ref = model(x, 9)
    model = model.to(memory_format=torch.channels_last)
    torch.testing.assert_close(
        model(x.to(memory_format=torch.channels_last), 9), ref, atol=1e-5, rtol=1e-4
    )


@pytest.mark.parametrize(
    "options",
    [
        dict(use_scale_shift_norm=True),
        dict(resblock_updown=True),
        dict(conv_resample=False),
        dict(head_channels=8, attention_resolutions=(32, 16)),
        dict(attention_resolutions=()),
    ],
    ids=lambda o: ",".join(o),
)
def test_attention_unet_variants(options):
    model = small(AttentionUNet, num_res_blocks=2, **options).eval()
    perturb_zero_init(model)
    assert_per_sample(model, torch.randn(2, 1, 32, 32), torch.tensor([3, 600]))


def test_ddpm_cifar10_parameter_count():
    """The DDPM paper's CIFAR-10 network has 35.7M parameters (diffusers: 35,746,307)."""
    n = sum(p.numel() for p in AttentionUNet(**DDPM_CIFAR10).parameters())
    assert abs(n - 35_746_307) / 35_746_307 < 0.01, n


def test_default_attention_is_one_halving_down():
    assert len(AttentionUNet(image_size=28, base_channels=32).up[3]) == 2  # ResBlock + attention
    with pytest.raises(ValueError, match=r"attention_resolutions .*\[28, 14, 7\]"):
        AttentionUNet(image_size=28, attention_resolutions=(16,))


@pytest.mark.parametrize(
    "cls,kwargs,message",
    [
        (BasicUNet, dict(in_channels=0), "in_channels must be an integer >= 1"),
        (BasicUNet, dict(channel_mult=()), "channel_mult must be a non-empty"),
        (BasicUNet, dict(channel_mult=(1, -2)), "channel_mult must be a sequence of positive"),
        (BasicUNet, dict(time_embed_dim=1), "time_embed_dim must be an integer >= 2"),
        (UNet, dict(base_channels=12, norm_groups=8), "norm_groups=8 must divide"),
        (UNet, dict(activation="relu"), "activation must be one of"),
        (UNet, dict(dropout=1.0), r"dropout must be a number in \[0, 1\) \(a probability\)"),
        (AttentionUNet, dict(image_size=0), "image_size must be an integer >= 1"),
        (AttentionUNet, dict(num_res_blocks=0), "num_res_blocks must be an integer >= 1"),
        (AttentionUNet, dict(num_heads=3), "num_heads=3 must divide"),
        (AttentionUNet, dict(head_channels=48), "head_channels=48 must divide"),
        (AttentionUNet, dict(num_classes=0), "num_classes must be an integer >= 1"),
        (AttentionUNet, dict(attention_resolutions=(12,)), "attention_resolutions must be"),
        (AttentionUNet, dict(out_channels="3"), "out_channels must be an integer"),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else None,
)
def test_bad_arguments_raise_clear_errors(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


@pytest.mark.parametrize("cls", BACKBONES, ids=name_of)
def test_bad_inputs_raise_clear_errors(cls):
    model = small(cls)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 1, height, width\)"):
        model(torch.randn(2, 3, 28, 28), 5)
    with pytest.raises(ValueError, match="t must be a scalar or have shape"):
        model(torch.randn(2, 1, 28, 28), torch.tensor([1, 2, 3]))


@pytest.mark.parametrize("cls", [BasicUNet, UNet, AttentionUNet], ids=name_of)
def test_a_conditioned_network_reads_its_image_and_level(cls):
    torch.manual_seed(0)
    model = small(cls, in_channels=3, image_size=16, cond_channels=3).eval()  # no dropout
    perturb_zero_init(model)
    gen = torch.Generator().manual_seed(0)
    x, cond = torch.randn(2, 3, 16, 16, generator=gen), torch.randn(2, 3, 16, 16, generator=gen)
    t = torch.tensor([10, 500])
    out = model(x, t, cond=cond, level=torch.tensor([0.0, 0.3]))
    assert out.shape == x.shape
    # the output depends on the conditioning image and on its level, and level None is 0
    assert not torch.allclose(out, model(x, t, cond=torch.zeros_like(cond), level=0.0))
    assert not torch.allclose(out, model(x, t, cond=cond, level=0.7))
    torch.testing.assert_close(model(x, t, cond=cond), model(x, t, cond=cond, level=0.0))
    with pytest.raises(ValueError, match=r"pass cond of shape \(2, 3, 16, 16\); got none"):
        model(x, t)
    with pytest.raises(ValueError, match="built with cond_channels=0"):
        small(cls, in_channels=3, image_size=16)(x, t, cond=cond)


def test_the_conditioning_leaves_unconditioned_networks_as_they_were():
    """cond_channels=0 builds the same parameters from the same seed as before it existed:
    the state dict keys of saved checkpoints and seeded weights do not move."""
    torch.manual_seed(0)
    plain = small(AttentionUNet)
    torch.manual_seed(0)
    conditioned = small(AttentionUNet, cond_channels=1)
    extra = set(conditioned.state_dict()) - set(plain.state_dict())
    assert extra and all(key.startswith("time_embed.level.") for key in extra)
    assert set(plain.state_dict()) <= set(conditioned.state_dict())
    assert conditioned.conv_in.weight.shape[1] == 2 and plain.conv_in.weight.shape[1] == 1
