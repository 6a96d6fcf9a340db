"""``DiffusionPipeline`` as a diffusers user drives it from a notebook: the run's own sampler by
default, diffusers' argument names, PIL and numpy images in and out of every method, ``to`` and
``repr``, saving, and the README's and the module docstring's examples run as written."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import diffusion.sampling.pipeline as pipeline_module
from diffusion.errors import ConfigError
from diffusion.pipeline import DiffusionPipeline, PipelineOutput, save_images
from editing_helpers import gaussian_pipe
from test_train import run_training

README = Path(__file__).parents[1] / "README.md"
RUN_PLACEHOLDER = "runs/mnist/<date>_<time>"
SMALL = ("model=basic", "model.base_channels=8", "trainer.sample_every=0", "trainer.val_every=0")


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_mnist_root):
    """A 4-step run whose grids' sampler is Heun with 3 steps (5 network evaluations)."""
    folder, _ = run_training(tmp_path_factory.mktemp("api"), tiny_mnist_root, *SMALL,
                             "sampler=heun", "sampler.steps=3")
    return folder


@pytest.fixture(scope="module")
def pipe(run):
    return DiffusionPipeline.from_run(run, device="cpu")


@contextlib.contextmanager
def counted(model):
    """The number of forward calls of ``model`` inside the block (``calls[0]``)."""
    calls = [0]
    handle = model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        yield calls
    finally:
        handle.remove()


def _seed(s):
    return torch.Generator().manual_seed(s)


# ------------------------------------------------------------------------ default sampler


def test_a_run_samples_with_its_own_sampler_and_steps(pipe):
    assert (pipe.sampler.name, pipe.default_steps) == ("heun", 3)
    with counted(pipe.model) as calls:
        out = pipe(4)
    assert calls[0] == 2 * 3 - 1  # Heun: two evaluations a step but the last; not 1000
    assert isinstance(out, PipelineOutput) and out.images.shape == (4, 1, 28, 28)
    with counted(pipe.model) as calls:
        pipe(2, steps=2)  # the run's sampler, other steps
    assert calls[0] == 3
    with counted(pipe.model) as calls:
        pipe(2, sampler="ddim")  # another sampler, the run's steps
    assert calls[0] == 3


def test_a_pipeline_built_directly_defaults_to_ddim_50():
    pipe = gaussian_pipe()
    pipe(2)
    assert len(pipe.model.calls) == 50 and pipe.sampler.name == "ddim"
    short = gaussian_pipe(num_train_timesteps=40)  # fewer training steps than 50: all of them
    short(2)
    assert len(short.model.calls) == 40


# ------------------------------------------------------------------ diffusers' arguments


def test_num_inference_steps_is_steps(pipe):
    with counted(pipe.model) as calls:
        pipe(2, num_inference_steps=2)
    assert calls[0] == 3
    same = pipe(2, steps=2, num_inference_steps=2, generator=_seed(0)).images
    torch.testing.assert_close(same, pipe(2, steps=2, generator=_seed(0)).images, rtol=0, atol=0)
    with pytest.raises(ConfigError, match=r"^steps=2 and num_inference_steps=3 disagree: pass "
                                          r"one of them"):
        pipe(2, steps=2, num_inference_steps=3)


def test_a_generator_or_a_seed_makes_the_draw_reproducible(pipe):
    a = pipe(3, generator=_seed(0)).images
    assert torch.equal(a, pipe(3, generator=_seed(0)).images)
    assert torch.equal(a, pipe(3, seed=0).images)
    assert not torch.allclose(a, pipe(3, generator=_seed(1)).images)
    with pytest.raises(ConfigError, match="^seed and generator were both given"):
        pipe(3, seed=0, generator=_seed(0))


def test_a_list_of_generators_draws_each_image_from_its_own(pipe):
    """Image i depends on generator i alone, step noise included (euler_a draws some at every
    step), whatever the batching: as diffusers' list of generators."""
    together = pipe(3, sampler="euler_a", generator=[_seed(s) for s in (5, 6, 7)],
                    batch_size=2).images
    for i, s in enumerate((5, 6, 7)):
        alone = pipe(1, sampler="euler_a", generator=_seed(s)).images
        torch.testing.assert_close(together[i:i + 1], alone, rtol=0, atol=1e-5)
    assert not torch.allclose(together[0], together[1])
    with pytest.raises(ConfigError, match=r"^generator must be one torch.Generator or a list "
                                          r"of 3 \(one per image\); got a list of 2\.$"):
        pipe(3, generator=[_seed(0), _seed(1)])


def test_output_types_as_diffusers_gives_them(pipe):
    pt = pipe(2, generator=_seed(0)).images
    assert torch.is_tensor(pt) and pt.shape == (2, 1, 28, 28) and pt.dtype == torch.float32
    arrays = pipe(2, generator=_seed(0), output_type="np").images
    assert isinstance(arrays, np.ndarray) and arrays.shape == (2, 28, 28, 1)
    assert arrays.dtype == np.float32 and arrays.min() >= 0 and arrays.max() <= 1
    np.testing.assert_allclose(arrays, ((pt + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy(),
                               atol=1e-6)
    pil = pipe(2, generator=_seed(0), output_type="pil").images
    assert isinstance(pil, list) and len(pil) == 2
    assert all(isinstance(im, Image.Image) and im.mode == "L" and im.size == (28, 28)
               for im in pil)
    np.testing.assert_array_equal(np.asarray(pil[1]), (arrays[1, ..., 0] * 255).round())
    with pytest.raises(ConfigError, match=r"^output_type must be one of pt, np, pil .*; got "
                                          r"'latent'\.$"):
        pipe(2, output_type="latent")


def test_return_dict_false_gives_a_tuple(pipe):
    result = pipe(2, generator=_seed(0), return_dict=False)
    assert isinstance(result, tuple) and len(result) == 1
    assert torch.equal(result[0], pipe(2, generator=_seed(0)).images)
    images, chain, timesteps = pipe(2, return_chain=True, chain_frames=2, return_dict=False)
    assert chain.shape[:2] == (2, 2) and timesteps[-1] == -1


def test_n_is_the_number_of_images_not_batch_size(pipe):
    with pytest.raises(ConfigError, match=r"^pass the number of images as n, e.g. pipe\(4\); "
                                          r"batch_size is how many"):
        pipe(batch_size=4)


# ------------------------------------------------------------------ images in and out


def _model_range(pil_images):
    return torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32) / 255)[None]
                        for im in pil_images]) * 2 - 1


def test_editing_takes_pil_numpy_and_tensors_alike(pipe):
    pil = pipe(2, seed=3, output_type="pil").images
    tensors = _model_range(pil)
    arrays = tensors.permute(0, 2, 3, 1).numpy() / 2 + 0.5
    edits = [pipe.img2img(x, strength=0.7, seed=0).images for x in (pil, arrays, tensors)]
    torch.testing.assert_close(edits[0], edits[2], rtol=0, atol=0)
    torch.testing.assert_close(edits[1], edits[2], rtol=0, atol=1e-6)
    one = pipe.img2img(pil[0], strength=0.7, seed=0).images  # a single PIL image
    assert one.shape == (1, 1, 28, 28)
    assert not torch.allclose(edits[2], tensors, atol=1e-2)  # it did edit


def test_inpaint_takes_a_pil_mask_and_keeps_the_known_pixels(pipe):
    pil = pipe(2, seed=3, output_type="pil").images
    mask = torch.zeros(28, 28)
    mask[7:21, 7:21] = 1
    png = Image.fromarray((mask.numpy() * 255).astype(np.uint8))
    by_png = pipe.inpaint(pil, png, jump_length=2, jump_n_sample=2, seed=0).images
    by_tensor = pipe.inpaint(_model_range(pil), mask, jump_length=2, jump_n_sample=2,
                             seed=0).images
    torch.testing.assert_close(by_png, by_tensor, rtol=0, atol=0)
    known = (by_png - _model_range(pil)) * (1 - mask)
    assert known.abs().max() < 1e-4
    assert (by_png - _model_range(pil))[..., 7:21, 7:21].abs().max() > 1e-2


@pytest.mark.parametrize("output_type", ["pt", "np", "pil"])
def test_every_method_returns_the_same_kind_of_output(pipe, output_type):
    kind = {"pt": torch.Tensor, "np": np.ndarray, "pil": list}[output_type]
    pil = pipe(2, seed=1, output_type="pil").images
    inverted = pipe.invert(pil, output_type=output_type)
    assert torch.is_tensor(inverted.latents) and inverted.latents.shape == (2, 1, 28, 28)
    results = {
        "call": pipe(2, output_type=output_type),
        "img2img": pipe.img2img(pil, output_type=output_type),
        "inpaint": pipe.inpaint(pil, torch.ones(28, 28), jump_n_sample=1, output_type=output_type),
        "invert": inverted,
        "regenerate": pipe.regenerate(inverted, output_type=output_type),
        "interpolate": pipe.interpolate(inverted.latents[0], inverted.latents[1], 3,
                                        output_type=output_type),
    }
    for name, out in results.items():
        assert isinstance(out, PipelineOutput) and isinstance(out.images, kind), name
        assert len(out.images) == (3 if name == "interpolate" else 2), name
    as_tuple = pipe.invert(pil, output_type=output_type, return_dict=False)
    assert len(as_tuple) == 2 and torch.equal(as_tuple[1], inverted.latents)
    (images,) = pipe.img2img(pil, output_type=output_type, return_dict=False)
    assert isinstance(images, kind)


@pytest.mark.parametrize("images,message", [
    (Image.new("L", (32, 32)), r"^images\[0\] is 32x32 but this model makes 28x28 images: "
                               r"resize it first"),
    (np.zeros((2, 28, 28, 3), np.float32), r"^images as a numpy array must have shape "
                                           r"\(N, 28, 28, 1\)"),
    (np.full((28, 28), 2.0), r"^images as a float numpy array must be in \[0, 1\]"),
    (torch.zeros(2, 3, 28, 28), r"^images must have shape \(N, 1, 28, 28\) for this model"),
    ("digit.png", r"^images must be a PIL image or a list of them, a numpy array"),
])
def test_images_of_the_wrong_kind_size_or_range_are_one_sentence(pipe, images, message):
    with pytest.raises(ValueError, match=message):
        pipe.img2img(images)


def test_a_pil_mask_of_the_wrong_size_is_one_sentence(pipe):
    with pytest.raises(ValueError, match=r"^mask\[0\] is 14x14 but the images are 28x28"):
        pipe.inpaint(torch.zeros(1, 1, 28, 28), Image.new("L", (14, 14)))


# ------------------------------------------------------------------ to, repr and saving


def test_to_returns_the_pipeline_and_repr_names_what_it_holds(pipe):
    assert pipe.to("cpu") is pipe and pipe.device == torch.device("cpu")
    text = repr(pipe)
    parameters = sum(p.numel() for p in pipe.model.parameters())
    for field in ("BasicUNet", f"{parameters:,} parameters", "DDPMScheduler",
                  "sampler=heun, 3 steps (trailing)", "image_shape=(1, 28, 28)",
                  "num_classes=None", "device=cpu"):
        assert field in text, (field, text)


def test_every_output_type_saves_the_same_grid(pipe, tmp_path):
    grids = []
    for output_type in ("pt", "np", "pil"):
        out = pipe(4, generator=_seed(0), output_type=output_type)
        grids.append(np.asarray(Image.open(out.save(tmp_path / f"{output_type}.png"))))
    assert grids[0].shape[:2] == (62, 62)  # 2x2 images of 28 px with 2 px padding
    for grid in grids[1:]:
        np.testing.assert_array_equal(grid, grids[0])
    pil = pipe(3, generator=_seed(0), output_type="pil").images
    row = np.asarray(Image.open(pipe.save(pil, tmp_path / "row.png", nrow=3)))
    assert row.shape[:2] == (32, 92)
    assert save_images(pil[0], tmp_path / "one.png").is_file()
    with pytest.raises(ConfigError, match=r"^path must be an image file name"):
        save_images(pil, tmp_path / "grid.txt")


# ------------------------------------------------------------------ the docs run as written


def _readme_snippets() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    return [b for b in blocks if "DiffusionPipeline.from_run(" in b]


def _run_snippet(code: str, run: Path, folder: Path, monkeypatch) -> str:
    assert RUN_PLACEHOLDER in code
    monkeypatch.chdir(folder)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code.replace(RUN_PLACEHOLDER, str(run)), "<snippet>", "exec"), {})
    return printed.getvalue()


def test_the_readme_pipeline_and_editing_snippets_run(run, tmp_path, monkeypatch):
    snippets = [s for s in _readme_snippets() if "guidance=" not in s
                and "ScoreSDEScheduler" not in s]
    assert len(snippets) == 2  # sampling, editing
    printed = _run_snippet(snippets[0], run, tmp_path, monkeypatch)
    assert "torch.Size([16, 1, 28, 28])" in printed and "(4, 28, 28, 1) True True" in printed
    assert "sampler=heun, 3 steps" in printed
    _run_snippet(snippets[1], run, tmp_path, monkeypatch)
    for name in ("samples.png", "digit.png", "inpainted.png", "round_trip.png",
                 "interpolation.png"):
        assert (tmp_path / name).is_file(), name


def test_the_readme_score_sde_snippet_runs(run, tmp_path, monkeypatch):
    snippets = [s for s in _readme_snippets() if "ScoreSDEScheduler" in s]
    assert len(snippets) == 1 and "steps=500" in snippets[0]
    _run_snippet(snippets[0].replace("steps=500", "steps=3") + "\nprint(images.shape)", run,
                 tmp_path, monkeypatch)


def test_the_readme_guidance_snippet_runs(tmp_path, tiny_mnist_root, monkeypatch):
    snippets = [s for s in _readme_snippets() if "guidance=" in s]
    assert len(snippets) == 1
    conditional, _ = run_training(tmp_path, tiny_mnist_root, *SMALL, "conditioning=class",
                                  "sampler.steps=2", name="conditional")
    _run_snippet(snippets[0], conditional, tmp_path, monkeypatch)


def test_the_module_docstring_example_runs(run, tmp_path, monkeypatch):
    lines = [line[4:] for line in pipeline_module.__doc__.splitlines()
             if line.startswith(">>> ")]
    assert any("from_run" in line for line in lines) and any("img2img" in line for line in lines)
    _run_snippet("\n".join(lines), run, tmp_path, monkeypatch)
    assert (tmp_path / "samples.png").is_file()
