"""No sampler waits for the device at a step: ``scale_model_input`` and ``step`` never read a
tensor's value back to the host (``.item()``, ``bool``, ``int``, ``.tolist()``), so a GPU runs
the reverse process without a synchronisation per step.

On the CPU the timesteps are put on the ``meta`` device, whose values cannot be read at all,
and reading any tensor is made an error; on a GPU (skipped without one)
``torch.cuda.set_sync_debug_mode`` turns every synchronisation into an error.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from diffusion.sampling.pipeline import DiffusionPipeline, make_sampler
from diffusion.schedulers import DDPMScheduler, NoiseScheduler

CASES = [(name, 0.0) for name in sorted(NoiseScheduler.SAMPLERS)] + [("ddim", 0.5)]
IDS = [f"{name}-eta{eta}" for name, eta in CASES]
READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy", "cpu")


def _loop(sched, x, generator, model=None):
    """diffusers' sampling loop, as the pipeline runs it; ``model`` defaults to a smooth
    function of x alone."""
    for t in sched.timesteps:
        inp = sched.scale_model_input(x, t)
        out = 0.1 * inp if model is None else model(inp, t.expand(x.shape[0])).float()
        x = sched.step(out, t, x, generator=generator).prev_sample
    return x


def _sampler(name, eta, schedule="linear"):
    train = DDPMScheduler(beta_schedule=schedule, prediction_type="epsilon")
    return make_sampler(train, name, eta=eta, timestep_spacing="trailing")


@pytest.mark.parametrize(("name", "eta"), CASES, ids=IDS)
def test_steps_never_read_a_tensor_back(name, eta, monkeypatch):
    """With timesteps on the meta device and every read of a tensor's value an error, each
    sampler still runs, and gives the same samples as with its timesteps on the CPU."""
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    reference = _sampler(name, eta)
    reference.set_timesteps(6)
    expected = _loop(reference, x * reference.init_noise_sigma,
                     torch.Generator().manual_seed(1))
    sched = _sampler(name, eta)
    sched.set_timesteps(6, device="meta")
    start = x * sched.init_noise_sigma

    def refuse(self, *args, **kwargs):
        raise AssertionError("a sampler read a tensor's value inside the sampling loop")

    for read in READS:
        monkeypatch.setattr(torch.Tensor, read, refuse)
    got = _loop(sched, start, torch.Generator().manual_seed(1))
    monkeypatch.undo()
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_a_timestep_out_of_order_is_still_refused_on_the_meta_device():
    sched = _sampler("euler", 0.0)
    sched.set_timesteps(4, device="meta")
    x = torch.zeros(1)
    sched.scale_model_input(x, sched.timesteps[2])  # the first call places the run (no read)
    x = sched.step(x, sched.timesteps[2], x).prev_sample
    with pytest.raises(ValueError, match=r"call 3 of this run is at timesteps\[3\], not "
                                         r"timesteps\[1\]"):
        sched.scale_model_input(x, sched.timesteps[1])
    ddim = _sampler("ddim", 0.0)
    ddim.set_timesteps(4, device="meta")
    assert ddim.previous_timestep(ddim.timesteps[1]) == ddim._steps[2]  # any order, looked up


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize("generator", ["cpu", "cuda", None])
@pytest.mark.parametrize(("name", "eta"), CASES, ids=IDS)
def test_cuda_sampling_loop_never_syncs(name, eta, generator):
    """Every sampler's steps on a GPU, with its noise drawn from a CPU generator (as the
    pipeline draws it: pinned memory, copied without blocking), a GPU generator or none."""
    sched = _sampler(name, eta, schedule="cosine")
    sched.set_timesteps(8, device="cuda")
    x = torch.randn(2, 3, 8, 8, device="cuda") * sched.init_noise_sigma
    gen = None if generator is None else torch.Generator(generator).manual_seed(0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        x = _loop(sched, x, gen)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(x).all()


@cuda
@pytest.mark.parametrize(("name", "eta"), CASES, ids=IDS)
def test_cuda_samples_match_the_cpu_with_a_cpu_generator(name, eta):
    """The step noise copied to the GPU without blocking is the noise the CPU run draws."""
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    runs = []
    for device in ("cpu", "cuda"):
        sched = _sampler(name, eta)
        sched.set_timesteps(10, device=device)
        start = x.to(device) * sched.init_noise_sigma
        runs.append(_loop(sched, start, torch.Generator().manual_seed(1)).cpu())
    torch.testing.assert_close(runs[1], runs[0], rtol=1e-4, atol=1e-4)


@cuda
@pytest.mark.parametrize(("name", "eta"), CASES, ids=IDS)
def test_cuda_pipeline_syncs_per_batch_not_per_step(name, eta):
    """The pipeline's own loop (network under autocast, chunk-seeded CPU generator): the
    synchronisations it makes (x_T to the device, the timesteps table) do not grow with the
    number of steps."""
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3, padding=1))
    net = _TimeFree(model)
    pipe = DiffusionPipeline(net, DDPMScheduler(), (1, 8, 8), device="cuda", num_classes=None)
    counts = []
    for steps in (2, 4, 8):  # the first, uncounted, makes the one-off synchronisations
        sched = pipe._sampler(make_sampler(pipe.scheduler, name, eta=eta), steps, eta)
        x = torch.randn(3, 1, 8, 8, device="cuda")
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                pipe._denoise(sched, x, None, torch.Generator().manual_seed(0), False, 2)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(w.message) for w in caught))
    assert counts[1] == counts[2], counts  # before: DDIM 6 and 9, DDPM 8 and 16 (H200)


class _TimeFree(torch.nn.Module):
    """A network that ignores t and y (the pipeline's call signature)."""

    def __init__(self, body: torch.nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x, t, y=None):
        return self.body(x)
