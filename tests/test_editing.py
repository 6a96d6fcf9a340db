"""Image-to-image, inpainting, DDIM inversion and interpolation against closed forms (an exact
denoiser for Gaussian data) and, for RePaint, against diffusers' scheduler run in the same loop.
"""

import math

import pytest
import torch

from diffusion.editing import interpolation_noises, repaint_nfe, slerp
from diffusion.editing.img2img import start_index
from diffusion.schedulers import EulerDiscreteScheduler
from editing_helpers import gaussian_pipe


@pytest.fixture(scope="module")
def pipe():
    return gaussian_pipe()


def _images(n=4, seed=0, shape=(1, 16, 16)):
    return (torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1)


# ---------------------------------------------------------------------------- img2img


def test_img2img_strength_zero_is_the_input_and_one_is_plain_sampling(pipe):
    images = _images()
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(1))
    assert torch.equal(pipe.img2img(images, strength=0.0, steps=20).images, images)
    pipe.model.calls.clear()
    edited = pipe.img2img(images, strength=1.0, steps=20, noise=noise).images
    assert len(pipe.model.calls) == 20
    torch.testing.assert_close(edited, pipe(4, steps=20, noise=noise).images, rtol=0, atol=0)


@pytest.mark.parametrize("sampler,steps", [("ddim", 500), ("euler", 500), ("heun", 250),
                                           ("dpmpp_2m", 100), ("ddpm", 1000)])
@pytest.mark.parametrize("strength", [0.2, 0.5, 0.8])
def test_img2img_starts_at_the_level_strength_selects(pipe, sampler, steps, strength):
    """SDEdit with an exact model, from x_t = sqrt(a) x0 + sqrt(1 - a) z at the first timestep
    run: an ODE sampler follows the flow to mu + s (x_t - sqrt(a) mu) / sqrt(D), D = a s^2 + 1
    - a, so over z its output has mean mu + s sqrt(a) (x0 - mu) / sqrt(D) and spread
    s sqrt((1 - a) / D); DDPM samples p(x0 | x_t) instead: mean mu + s^2 a (x0 - mu) / D and
    variance s^4 a (1 - a) / D^2 + s^2 (1 - a) / D. Steps fine enough that the discretisation
    stays below the tolerance; a start one grid step off fails for the larger strengths."""
    pipe.model.calls.clear()
    out = pipe.img2img(torch.full((64, 1, 16, 16), 0.8), strength=strength, steps=steps,
                       sampler=sampler, generator=torch.Generator().manual_seed(0)).images
    runs = round(strength * steps)
    assert len(pipe.model.calls) == (2 * runs - 1 if sampler == "heun" else runs)
    sched = pipe._sampler(sampler, steps, 0.0, "trailing")
    t = float(sched.timesteps[sched.state_positions[start_index(strength, steps)]])
    assert pipe.model.calls[0] == int(t)
    a = 1 / (1 + float(sched.sigmas[sched.state_positions[start_index(strength, steps)]])**2) \
        if hasattr(sched, "sigmas") else pipe.scheduler.alpha_bar(int(t))
    s, mu = pipe.model.s, pipe.model.mu
    d = a * s**2 + 1 - a
    if sampler == "ddpm":
        mean, std = mu + s**2 * a * (0.8 - mu) / d, math.sqrt(s**4 * a * (1 - a) / d**2
                                                              + s**2 * (1 - a) / d)
    else:
        mean = mu + s * math.sqrt(a) * (0.8 - mu) / math.sqrt(d)
        std = s * math.sqrt((1 - a) / d)
    assert abs(out.mean().item() - mean) < 0.01
    assert abs(out.std().item() / std - 1) < 0.03
    assert start_index(strength, 50) == 50 - round(strength * 50)


def test_img2img_rejects_bad_strength_samplers_and_images(pipe):
    with pytest.raises(ValueError, match=r"^strength must be a number in \[0, 1\]"):
        pipe.img2img(_images(), strength=1.5)
    with pytest.raises(ValueError, match=r"^sampler must be one of ald, corrupt, ddim, ddpm"):
        pipe.img2img(_images(), sampler="euler_b")
    with pytest.raises(ValueError, match=r"^the edits run the discrete samplers; sampler=pc is "
                                         r"a continuous-time one: use one of ddim, ddpm, "
                                         r"dpmpp_2m, dpmpp_2m_sde, dpmpp_3m, euler, euler_a, "
                                         r"heun.$"):
        pipe.img2img(_images(), sampler="pc")
    with pytest.raises(ValueError, match=r"^images must have shape \(N, 1, 16, 16\) for this "
                                         r"model; got \(2, 3, 16, 16\)\.$"):
        pipe.img2img(torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"^images must be in \[-1, 1\].*got values from 0 "
                                         r"to 255"):
        pipe.img2img(torch.full((1, 1, 16, 16), 255.0).index_fill_(2, torch.tensor([0]), 0))


# ---------------------------------------------------------------------------- inpainting


def _center(n, size=16):
    mask = torch.zeros(n, 1, size, size)
    mask[..., size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1
    return mask


@pytest.mark.parametrize("jump_n_sample", [1, 3])
def test_inpaint_keeps_the_known_pixels_and_fills_the_rest_from_the_data(pipe, jump_n_sample):
    """Gaussian data has independent pixels, so the filled pixels must be N(mu, s^2) draws
    whatever the known ones are, and the known ones come back exactly. DDPM steps (eta = 1)
    over all T timesteps: with fewer, DDPM's fixed_small variance shrinks the spread (to 0.44
    at 50 steps), and every jump shrinks it again."""
    images, mask = _images(64), torch.zeros(1, 1, 16, 16)
    mask[..., 8:] = 1
    out = pipe.inpaint(images, mask, steps=1000, jump_length=10, jump_n_sample=jump_n_sample,
                       eta=1.0, generator=torch.Generator().manual_seed(0)).images
    assert (out - images)[..., :8].abs().max() < 1e-6
    filled = out[..., 8:]
    assert abs(filled.mean().item() - 0.3) < 0.015 and abs(filled.std().item() / 0.5 - 1) < 0.02


def test_inpaint_matches_diffusers_repaint_scheduler_in_the_same_loop():
    """Our pipeline's RePaint against diffusers' RePaintScheduler driven as its RePaintPipeline
    drives it, with the same model, x_T and generator (n = T, where both undo steps agree)."""
    diffusers = pytest.importorskip("diffusers")
    pipe = gaussian_pipe(num_train_timesteps=40, beta_start=1e-4, beta_end=0.02)
    images, mask = _images(3), _center(3)
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(7))
    ours = pipe.inpaint(images, mask, steps=40, jump_length=4, jump_n_sample=3, eta=1.0,
                        timestep_spacing="leading", noise=noise,
                        generator=torch.Generator().manual_seed(0)).images
    theirs = diffusers.RePaintScheduler(num_train_timesteps=40, eta=1.0, clip_sample=False)
    theirs.betas = theirs.betas.double()
    theirs.alphas_cumprod = torch.cumprod(1 - theirs.betas, 0)
    theirs.set_timesteps(40, 4, 3)
    generator, x, t_last = torch.Generator().manual_seed(0), noise, theirs.timesteps[0] + 1
    for t in theirs.timesteps:
        if t < t_last:
            out = pipe.model(x, t.expand(3))
            x = theirs.step(out, t, x, images, 1 - mask, generator=generator).prev_sample
        else:
            x = theirs.undo_step(x, t_last, generator=generator)
        t_last = t
    assert (ours - x).abs().max() < 1e-5


def test_repaint_nfe_counts_the_model_calls():
    pipe = gaussian_pipe()
    pipe.model.calls.clear()
    pipe.inpaint(_images(2), _center(2), steps=30, jump_length=5, jump_n_sample=4)
    assert len(pipe.model.calls) == repaint_nfe(30, 5, 4) == 30 + 3 * 5 * 5
    assert repaint_nfe(30, 5, 1) == 30


@pytest.mark.parametrize("mask,message", [
    (torch.zeros(8, 8), r"^mask must be 16x16 with 1 channel .* got shape \(8, 8\)\.$"),
    (torch.zeros(2, 3, 16, 16), r"^mask must be 16x16 with 1 channel \(one mask"),
    (torch.zeros(3, 1, 16, 16), r"one per image: N=2"),
    (torch.full((16, 16), 2.0), r"^mask values must be in \[0, 1\] \(1: fill in, 0: keep\); "
                                r"got values from 2 to 2\.$"),
])
def test_inpaint_rejects_a_mask_of_the_wrong_size_or_values(pipe, mask, message):
    with pytest.raises(ValueError, match=message):
        pipe.inpaint(_images(2), mask, steps=2)


# ------------------------------------------------------------ inversion and interpolation


def test_inversion_reaches_the_closed_form_x_T_and_regenerates_the_images(pipe):
    """For Gaussian data the DDIM ODE is linear: x_T = sqrt(a_T) mu + sqrt(D_T) (x0 - mu) / s.
    Inversion lands there, and DDIM from that x_T gives the images back: the plain inversion
    to first order in the step (10x the steps, much less than a tenth of the error), the
    fixed-point refined one exactly."""
    images = _images(4) * 0.9
    errors = {}
    for steps in (10, 100):
        x_T = pipe.invert(images, steps=steps).latents
        errors[steps] = (pipe.regenerate(x_T, steps=steps).images - images).pow(2).mean().item()
    t = pipe.scheduler.num_train_timesteps - 1
    a, s, mu = pipe.scheduler.alpha_bar(t), pipe.model.s, pipe.model.mu
    closed = math.sqrt(a) * mu + math.sqrt(a * s**2 + 1 - a) * (images - mu) / s
    assert (x_T - closed).abs().max() < 0.05
    assert errors[100] < 1e-3 and errors[100] < errors[10] / 20
    pipe.model.calls.clear()
    x_T = pipe.invert(images, steps=10, fixed_point=3).latents
    assert len(pipe.model.calls) == 10 * 4
    assert (pipe.regenerate(x_T, steps=10).images - images).pow(2).mean() < errors[10] / 100


def test_regenerate_does_not_clip_where_a_clipping_sampler_leaves_the_inverted_path():
    """Data whose mean (1.2) lies above 1, under a scheduler with clip_sample: x0_hat on the
    path of an image at 0.98 lies between 0.98 and 1.2, so DDIM with clipping misses the
    image while the unclipped decoder gives it back."""
    pipe = gaussian_pipe(clip_sample=True, mu=1.2)
    images = torch.full((2, 1, 16, 16), 0.98)
    x_T = pipe.invert(images, steps=50, fixed_point=3).latents
    assert (pipe.regenerate(x_T, steps=50).images - images).abs().max() < 1e-4
    assert (pipe(2, steps=50, noise=x_T).images - images).abs().max() > 1e-2


def test_conditional_edits_pass_the_labels():
    pipe = gaussian_pipe(num_classes=2)
    images = torch.zeros(2, 1, 16, 16)
    y = torch.tensor([0, 1])
    x_T = pipe.invert(images, steps=50, y=y, fixed_point=3).latents
    torch.testing.assert_close(pipe.regenerate(x_T, steps=50, y=y).images, images, atol=1e-3,
                               rtol=0)
    out = pipe.img2img(images, strength=1.0, steps=50, y=y,
                       generator=torch.Generator().manual_seed(0)).images
    assert out[1].mean() - out[0].mean() > 0.9  # class 1's data is 1 higher
    with pytest.raises(ValueError, match=r"^y must be class labels in \[0, 1\]; got 2\.$"):
        pipe.inpaint(images, _center(2), steps=2, y=torch.tensor([0, 2]))


def test_slerp_keeps_the_norm_of_gaussian_noise_and_hits_both_ends():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 32, 32, generator=g), torch.randn(1, 32, 32, generator=g)
    path = slerp(a, b, torch.linspace(0, 1, 9))
    torch.testing.assert_close(path[0], a) and torch.testing.assert_close(path[-1], b)
    norms = path.flatten(1).norm(dim=1)
    assert (norms / a.norm() - 1).abs().max() < 0.05  # a straight line dips to ~0.71 midway
    halfway = (a + b) / 2
    assert halfway.norm() / a.norm() < 0.8


def test_interpolate_decodes_the_arc_between_two_inverted_images(pipe):
    images = _images(2) * 0.9
    x_T = pipe.invert(images, steps=50, fixed_point=3).latents
    out = pipe.interpolate(x_T[0], x_T[1], 5, steps=50).images
    assert out.shape == (5, 1, 16, 16)
    torch.testing.assert_close(out[[0, -1]], images, atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match=r"^b must be one x_T of shape \(1, 16, 16\)"):
        interpolation_noises(x_T[0], x_T, 5, (1, 16, 16))


def test_set_begin_index_starts_a_sigma_sampler_part_way():
    sched = EulerDiscreteScheduler(timestep_spacing="trailing")
    with pytest.raises(ValueError, match=r"^call set_timesteps\(n\) before set_begin_index"):
        sched.set_begin_index(2)
    sched.set_timesteps(10)
    with pytest.raises(ValueError, match=r"^begin_index must be an integer from 0 to 9; got 10"):
        sched.set_begin_index(10)
    sched.set_begin_index(3)
    x = torch.ones(1, 1, 2, 2)
    with pytest.raises(ValueError, match=r"^call 3 of this run is at timestep"):
        sched.step(x, sched.timesteps[0], x)
    sched.step(x, sched.timesteps[3], x)
    assert sched.step_index == 4
