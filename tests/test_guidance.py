"""Classifier-free and classifier guidance (``diffusion.sampling.guidance``) through the pipeline:
against diffusers' guider, two separate passes, and the closed form of a Gaussian mixture
whose components are the classes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diffusion.models import BasicUNet
from diffusion.oracle.mixtures import ExactModel
from diffusion.sampling.guidance import Guidance, alpha_bar_at, class_rows, combine
from diffusion.sampling.pipeline import DiffusionPipeline
from diffusion.schedulers import DDPMScheduler
from guidance_helpers import ExactClassifier, ExactClassModel, mixture

try:  # diffusers >= 0.35 has the guiders the reference checks use
    from diffusers.guiders import ClassifierFreeGuidance
except ImportError:
    ClassifierFreeGuidance = None
needs_guider = pytest.mark.skipif(ClassifierFreeGuidance is None,
                                  reason="this diffusers has no guiders (0.35 and later do)")

SAMPLERS = ["ddim", "ddpm", "dpmpp_2m", "dpmpp_2m_sde", "euler", "euler_a", "heun"]
PREDICTION_TYPES = ["epsilon", "sample", "v_prediction"]
DIM, N = 4, 6


def _scheduler(prediction_type="epsilon"):
    return DDPMScheduler(num_train_timesteps=100, beta_schedule="cosine",
                         prediction_type=prediction_type, clip_sample=False)


def _pipe(model, scheduler, num_classes=3):
    return DiffusionPipeline(model, scheduler, (DIM, 1, 1), device="cpu",
                             num_classes=num_classes)


def _draw(pipe, sampler="ddim", steps=6, y=None, guidance=None, seed=0):
    return pipe(N, steps=steps, sampler=sampler, y=y, guidance=guidance,
                generator=torch.Generator().manual_seed(seed)).images


LABELS = torch.tensor([0, 1, 2, 2, 1, 0])


@needs_guider
@pytest.mark.parametrize("scale", [0.0, 1.0, 2.5, 7.5])
@pytest.mark.parametrize("rescale", [0.0, 0.7])
def test_combine_matches_diffusers_guider(scale, rescale):
    g = torch.Generator().manual_seed(1)
    cond, uncond = torch.randn(2, 4, 3, 8, 8, generator=g)
    reference = ClassifierFreeGuidance(guidance_scale=scale, guidance_rescale=rescale)
    expected = reference.forward(cond, uncond).pred
    torch.testing.assert_close(combine(cond, uncond, scale, rescale), expected,
                               rtol=1e-6, atol=1e-6)


def test_alpha_bar_at_is_the_table_at_integers_and_follows_sigma_between():
    sched = _scheduler()
    t = torch.tensor([0, 17, 99])
    torch.testing.assert_close(alpha_bar_at(sched, t), sched.alphas_cumprod[t])
    exact = ExactModel(mixture(), sched.alphas_cumprod)
    frac = torch.tensor([0.5, 17.25, 98.9], dtype=torch.float64)
    torch.testing.assert_close(alpha_bar_at(sched, frac), exact.alpha_bar(frac, 3).flatten())


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_classifier_guidance_at_scale_one_turns_the_unconditional_model_into_the_conditional(
        prediction_type):
    """grad log p(x_t) + grad log p(y | x_t) = grad log p(x_t | y): the unconditional exact
    model guided by the exact classifier is the exact conditional model, in every output
    space and at fractional timesteps (the Euler and Heun samplers pass those)."""
    m, sched = mixture(DIM), _scheduler(prediction_type)
    cond = ExactClassModel(m, sched.alphas_cumprod, prediction_type)
    uncond = ExactModel(m, sched.alphas_cumprod, prediction_type)
    guided = Guidance(classifier=ExactClassifier(m, sched.alphas_cumprod), classifier_scale=1.0)
    denoise = guided.denoiser(uncond, None, sched)
    x = torch.randn(N, DIM, 1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for t in (5.0, 40.0, 62.5, 90.25):
        t_batch = torch.full((N,), t)
        torch.testing.assert_close(denoise(x, t_batch, LABELS).double(),
                                   cond(x, t_batch, LABELS), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "euler", "heun"])
def test_classifier_guided_samples_are_the_conditional_models_samples(sampler):
    m, sched = mixture(DIM), _scheduler()
    guidance = Guidance(classifier=ExactClassifier(m, sched.alphas_cumprod), classifier_scale=1.0)
    guided = _draw(_pipe(ExactModel(m, sched.alphas_cumprod), sched, num_classes=None),
                   sampler, y=LABELS, guidance=guidance)
    direct = _draw(_pipe(ExactClassModel(m, sched.alphas_cumprod), sched), sampler, y=LABELS)
    # float32 outputs that agree to 2e-7 (the test above); Heun's second stage amplifies
    # that from the cosine schedule's sigma_max = 2029 to 1e-3
    tolerance = 2e-3 if sampler == "heun" else 1e-4
    torch.testing.assert_close(guided, direct, rtol=tolerance, atol=tolerance)
    assert (guided - _draw(_pipe(ExactModel(m, sched.alphas_cumprod), sched, None),
                           sampler)).abs().max() > 0.05  # the guidance did something


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "heun", "pc", "ode"])
def test_guidance_scale_one_is_the_conditional_model_and_zero_the_unconditional(sampler):
    m, sched = mixture(DIM), _scheduler()
    model = ExactClassModel(m, sched.alphas_cumprod)
    pipe = _pipe(model, sched)
    assert torch.equal(_draw(pipe, sampler, y=LABELS, guidance=Guidance(scale=1.0)),
                       _draw(pipe, sampler, y=LABELS))
    unconditional = _pipe(ExactModel(m, sched.alphas_cumprod), sched, num_classes=None)
    assert torch.equal(_draw(pipe, sampler, y=LABELS, guidance=Guidance(scale=0.0)),
                       _draw(unconditional, sampler))
    assert not torch.equal(_draw(pipe, sampler, y=LABELS, guidance=Guidance(scale=3.0)),
                           _draw(pipe, sampler, y=LABELS))


class TwoPasses(nn.Module):
    """Reference classifier-free guidance: the conditional and the unconditional prediction
    from two separate forwards, combined as diffusers' guider does."""

    def __init__(self, model, scale, rescale):
        super().__init__()
        self.model, self.num_classes = model, model.num_classes
        self.guider = ClassifierFreeGuidance(guidance_scale=scale, guidance_rescale=rescale)

    def forward(self, x, t, y):
        return self.guider.forward(self.model(x, t, y), self.model(x, t, None)).pred


@needs_guider
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_classifier_free_guidance_of_a_backbone_matches_two_separate_passes(sampler):
    torch.manual_seed(0)
    model = BasicUNet(in_channels=DIM, image_size=1, base_channels=8, channel_mult=(1,),
                      time_embed_dim=16, num_classes=3)
    for p in model.parameters():  # untrained but not trivial: every output depends on y
        nn.init.normal_(p, std=0.1)
    sched = _scheduler()
    guided = _draw(_pipe(model, sched), sampler, y=LABELS,
                   guidance=Guidance(scale=3.0, rescale=0.5))
    reference = _draw(_pipe(TwoPasses(model, 3.0, 0.5), sched), sampler, y=LABELS)
    unguided = _draw(_pipe(model, sched), sampler, y=LABELS)
    size = guided.abs().max()  # an untrained epsilon: x_0 = (x_t - ...) / sqrt(a) runs large
    assert (guided - reference).abs().max() <= 1e-6 * size
    assert (guided - unguided).abs().max() >= 1e-3 * size


@pytest.mark.parametrize(("sampler", "steps", "nfe"), [("ddim", 5, 5), ("heun", 3, 5)])
def test_classifier_free_guidance_is_one_forward_of_2b_images_per_evaluation(sampler, steps,
                                                                             nfe):
    m, sched = mixture(DIM), _scheduler()
    model = ExactClassModel(m, sched.alphas_cumprod)
    _draw(_pipe(model, sched), sampler, steps, y=LABELS, guidance=Guidance(scale=2.0))
    assert model.batch_sizes == [2 * N] * nfe


@pytest.mark.parametrize("sampler", ["ddim", "euler", "dpmpp_2m"])
def test_guided_samples_do_not_depend_on_what_the_model_predicts(sampler):
    """The same exact model as an epsilon, x_0 and v predictor: classifier-free plus
    classifier guidance must give one set of samples (each guided in its own space)."""
    m = mixture(DIM)
    draws = []
    for prediction_type in PREDICTION_TYPES:
        sched = _scheduler(prediction_type)
        guidance = Guidance(scale=3.0, classifier=ExactClassifier(m, sched.alphas_cumprod),
                            classifier_scale=2.0)
        draws.append(_draw(_pipe(ExactClassModel(m, sched.alphas_cumprod, prediction_type),
                                 sched), sampler, y=LABELS, guidance=guidance))
    torch.testing.assert_close(draws[1], draws[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(draws[2], draws[0], rtol=1e-4, atol=1e-4)


def test_guidance_that_cannot_apply_is_one_sentence():
    m, sched = mixture(DIM), _scheduler()
    unconditional = _pipe(ExactModel(m, sched.alphas_cumprod), sched, num_classes=None)
    with pytest.raises(ValueError, match=r"^guidance_scale=3 needs a class-conditional model"):
        _draw(unconditional, y=LABELS, guidance=Guidance(scale=3.0))
    other = ExactClassifier(mixture(DIM, classes=5), sched.alphas_cumprod)
    with pytest.raises(ValueError, match=r"^The classifier tells 5 classes apart but the "
                                         r"model has 3"):
        _draw(_pipe(ExactClassModel(m, sched.alphas_cumprod), sched), y=LABELS,
              guidance=Guidance(classifier=other, classifier_scale=1.0))
    with pytest.raises(ValueError, match=r"^guidance_scale must be a number >= 0; got -1"):
        Guidance(scale=-1)
    with pytest.raises(ValueError, match=r"^guidance_rescale must be a number in \[0, 1\]"):
        Guidance(rescale=1.5)


@pytest.mark.parametrize(("classes", "n", "rows", "columns"),
                         [(10, 64, 10, 6), (102, 64, 16, 4), (10, 4, 4, 1), (3, 36, 3, 12)])
def test_class_rows_give_one_row_per_class_up_to_sixteen(classes, n, rows, columns):
    labels, per_row = class_rows(classes, n)
    assert per_row == columns and len(labels) == rows * columns <= n
    assert labels.reshape(rows, columns).tolist() == [[k] * columns for k in range(rows)]
