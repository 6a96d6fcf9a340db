"""Every command's ``--help``: what it does, its options and at least three examples, each of
which composes (so an example cannot name a key or option that is gone); ``--cfg job`` prints
resolved values; an optional launcher that is not installed is named in one sentence."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import shlex
import subprocess
import sys

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from cli_helpers import TINY, cli_env
from diffusion.commands import bench as bench_command
from diffusion.commands import edit as edit_command
from diffusion.commands import evaluate as evaluate_command
from diffusion.commands import reflow as reflow_command
from diffusion.commands import report as report_command
from diffusion.commands import sample as sample_command
from diffusion.commands import samplers_oracle
from diffusion.commands import train as train_command
from diffusion.commands import visualize as visualize_command
from diffusion.config import keys, preflight
from diffusion.config.options import check_classifier_options
from diffusion.config.paths import CONF_DIR
from diffusion.data.synthetic import write_shape_folder
from diffusion.errors import ConfigError
from diffusion.sampling.sampler import SamplerSpec
from hydra_utils import compose_config

COMMANDS = ("train", "sample", "evaluate", "edit", "visualize", "report", "bench",
            "train_classifier", "export", "reflow", "train_autoencoder")
"""The Hydra commands: ``python -m diffusion.<name>`` composes ``conf/<name>.yaml``."""

REWRITES = {"visualize": visualize_command._figure_word, "report": report_command._sweep_word,
            "bench": bench_command._hydra_argv, "evaluate": evaluate_command._list_overrides,
            "reflow": reflow_command._train_words}
"""What a command makes of its bare words and flags before Hydra reads the rest."""


def _run_main(name: str, *args: str, monkeypatch, capsys) -> str:
    """``python -m diffusion.<name> *args`` in this process; returns what it printed."""
    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", [f"diffusion.{name}", *args])
    try:
        importlib.import_module(f"diffusion.commands.{name}").main()
    except SystemExit as stop:
        assert stop.code in (0, None), stop.code
    finally:
        GlobalHydra.instance().clear()
    return capsys.readouterr().out


def _examples(text: str, name: str) -> list[list[str]]:
    """The arguments of each example line ``python -m diffusion.<name> ...`` of a help."""
    prefix = f"python -m diffusion.{name}"
    lines = [line.strip() for line in text.splitlines()]
    return [shlex.split(line)[3:] for line in lines
            if line == prefix or line.startswith(f"{prefix} ")]


@pytest.fixture(scope="module")
def helps() -> dict[str, str]:
    """Each command's --help, printed in this process (one compose each)."""
    out = {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        for name in COMMANDS:
            GlobalHydra.instance().clear()
            monkeypatch.setattr(sys, "argv", [f"diffusion.{name}", "--help"])
            with contextlib.redirect_stdout(io.StringIO()) as printed, \
                    pytest.raises(SystemExit) as stop:
                importlib.import_module(f"diffusion.commands.{name}").main()
            assert stop.value.code in (0, None), (name, stop.value.code)
            out[name] = printed.getvalue()
    GlobalHydra.instance().clear()
    return out


@pytest.mark.parametrize("name", COMMANDS)
def test_help_names_the_command_its_options_and_examples(helps, name):
    text = helps[name]
    assert text.startswith(f"diffusion.{name}: ")
    assert "Examples" in text and "powered by Hydra" not in text
    assert len(_examples(text, name)) >= 3, text
    assert f"== Options (key=value; the defaults of conf/{name}.yaml) ==" in text
    assert "README.md" in text


def test_help_lists_the_options_with_their_comments_and_the_groups(helps):
    sample = helps["sample"]
    assert "  n: 64\n" in sample and "  run: ???              # a run folder" in sample
    assert "hydra:" not in sample and "defaults:" not in sample
    assert "  sampler=run  options: ald, corrupt, ddim, ddpm, dpmpp_2m" in sample
    train = helps["train"]
    assert "  name: ${hydra:runtime.choices.model}-${data.name}" in train  # $ kept as written
    assert "  experiment=<none>" in train and "hydra=default" not in train
    assert "Config groups" not in helps["report"]  # report has none


def _autoencoder_folder(tmp_path, data: str, size: int) -> str:
    """A folder as diffusion.train_autoencoder leaves it, enough for latent= to be checked: its
    config (the examples' data and size) and a checkpoint file."""
    cfg = compose_config([f"data={data}", f"data.image_size={size}"],
                         config_name="train_autoencoder")
    folder = tmp_path / "autoencoder"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (folder / "checkpoints" / "step_00000001.pt").write_bytes(b"")
    return str(folder)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_example_composes(helps, name, tmp_path):
    for args in _examples(helps[name], name):  # as launch() reads them
        if any(a.startswith("latent=") for a in args):  # an autoencoder run of the example's
            words = dict(a.split("=", 1) for a in args if "=" in a)
            folder = _autoencoder_folder(tmp_path, words["data"], int(words["data.image_size"]))
            args = [f"latent={folder}" if a.startswith("latent=") else a for a in args]
        multirun = "-m" in args or "--multirun" in args
        if name not in REWRITES:
            keys.check_overrides([a for a in args if not a.startswith("-")], name, multirun)
        overrides = [a for a in REWRITES.get(name, list)(args) if not a.startswith("-")]
        if name in REWRITES:
            keys.check_overrides(overrides, name, multirun)
        if name == "train":
            preflight.check_jobs(CONF_DIR, "train", overrides, multirun)
            continue
        for job in preflight.split_jobs(overrides, multirun):
            cfg = compose_config(job, config_name=name)
            if name == "train_classifier":
                check_classifier_options(cfg)


def test_help_in_a_process_of_its_own_exits_0():
    result = subprocess.run([sys.executable, "-m", "diffusion.sample", "--help"],
                            capture_output=True, text=True, timeout=120, env=cli_env())
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("diffusion.sample: ")
    assert len(_examples(result.stdout, "sample")) >= 3


def test_the_oracle_help_ends_in_examples_that_parse(capsys):
    with pytest.raises(SystemExit) as stop:
        samplers_oracle.parse_args(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    examples = _examples(text, "samplers_oracle")
    assert "examples:" in text and len(examples) >= 3
    for args in examples:
        cfg, _ = samplers_oracle.parse_args(args)
        cfg.check()


@pytest.mark.parametrize("name", COMMANDS)
def test_cfg_job_prints_resolved_values(name, monkeypatch, capsys):
    out = _run_main(name, "--cfg", "job", monkeypatch=monkeypatch, capsys=capsys)
    assert out.strip() and "${" not in out, out


def test_cfg_job_shows_an_image_folders_class_count(tmp_path, monkeypatch, capsys):
    folder = write_shape_folder(tmp_path / "shapes", n=6)  # circles, squares, triangles
    out = _run_main("train", "data=image_folder", f"data.root={folder}", "--cfg", "job",
                    monkeypatch=monkeypatch, capsys=capsys)
    data = out[out.index("\ndata:\n"):]
    assert "\n  num_classes: 3\n" in data and "folder_classes" not in out


def test_cfg_hydra_still_prints_hydras_node(monkeypatch, capsys):
    out = _run_main("sample", "--cfg", "hydra", monkeypatch=monkeypatch, capsys=capsys)
    assert out.startswith("hydra:\n") and "hydra/help: sample" in out


def _options(*args: str) -> argparse.Namespace:
    return train_command._read_command_line(list(args))


def test_a_missing_launcher_plugin_is_named_before_any_folder(tmp_path, monkeypatch):
    """Through the command's own preparation, with a plugin module that cannot exist."""
    monkeypatch.setitem(keys.LAUNCHER_PLUGINS, "fake_cluster",
                        ("hydra_plugins.no_such_launcher_plugin", "slurm"))
    runs = tmp_path / "runs"
    with pytest.raises(ConfigError, match=r"hydra/launcher=fake_cluster needs .* not "
                                          r"installed: pip install -e '\.\[slurm\]'\.$"):
        train_command._prepare(_options("-m", "hydra/launcher=fake_cluster",
                                        f"paths.runs_dir={runs}", *TINY))
    assert not runs.exists()
    keys.check_launcher(["hydra/launcher=basic", "model=basic"])  # Hydra's own: nothing to say


def test_an_installed_launcher_plugin_passes(monkeypatch):
    monkeypatch.setitem(keys.LAUNCHER_PLUGINS, "here", ("hydra._internal", "slurm"))
    keys.check_launcher(["hydra/launcher=here"])


def test_train_without_the_slurm_extra_says_what_to_install(tmp_path):
    try:
        found = importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None
    except ImportError:
        found = False
    if found:
        pytest.skip("the submitit launcher is installed here")
    runs = tmp_path / "runs"
    result = subprocess.run(
        [sys.executable, "-m", "diffusion.train", "-m", "hydra/launcher=submitit_slurm",
         f"paths.runs_dir={runs}", *TINY], capture_output=True, text=True, timeout=120,
        env=cli_env())
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: hydra/launcher=submitit_slurm needs Hydra's submitit launcher plugin "
        "(hydra_plugins.hydra_submitit_launcher), which is not installed: "
        "pip install -e '.[slurm]'."]
    assert not runs.exists()


def _sample_name(*overrides: str) -> str:
    named = [] if any(o.startswith("sampler=") for o in overrides) else ["sampler=ddim"]
    cfg = compose_config(["run=runs/x", *named, *overrides], config_name="sample")
    return sample_command._stem(cfg, SamplerSpec.from_config(cfg.sampler), cfg.sampler.steps)


def test_sample_names_tell_apart_every_setting_that_changes_the_images():
    assert _sample_name("n=16") == "ddim-50_n16_seed0"
    names = [_sample_name(*o) for o in (
        ["n=16"], ["n=64"], ["n=16", "seed=1"], ["n=16", "sampler.steps=20"],
        ["n=16", "sampler=ddpm"], ["n=16", "sampler.eta=0.5"], ["n=16", "labels=3"],
        ["n=16", "labels=[1,2]"], ["n=16", "labels=3", "guidance_scale=2"],
        ["n=16", "sampler.timestep_spacing=leading"])]
    assert len(set(names)) == len(names), names


def _edit_name(*overrides: str) -> str:
    return edit_command._stem(compose_config(["run=runs/x", *overrides], config_name="edit"))


def test_edit_names_tell_apart_every_setting_that_changes_the_images():
    assert _edit_name("n=2", "samples=2", "strength=0.5", "sampler.steps=3") == \
        "img2img-test0-2-s0.5-x2-ddim-3_seed0"
    names = [_edit_name(*o) for o in (
        [], ["samples=2"], ["labels=1"], ["data_root=/data/other"],
        ["task=interpolate", "n=4"], ["task=interpolate", "n=4", "frames=5"],
        ["task=inpaint"], ["task=inpaint", "n=64", "batch_size=32"])]
    assert len(set(names)) == len(names), names
