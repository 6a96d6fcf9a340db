"""``python -m diffusion.export run=<run folder> out=<folder> [pipeline=ddim|ddpm]``

Writes a run as a diffusers pipeline folder that plain diffusers loads with
``DDIMPipeline.from_pretrained(out)`` (or ``DDPMPipeline``): ``unet/`` (the EMA weights of
the chosen checkpoint, ``UNet2DModel.save_pretrained``), ``scheduler/`` (the run's noise
process as diffusers' ``DDIMScheduler``/``DDPMScheduler`` config) and ``model_index.json``.
Runs trained with ``model=diffusers_unet`` export as they are; our own backbones have no
diffusers counterpart with the same weights, and are refused in one sentence.

``format=run`` writes a plain run folder instead: ``config.yaml`` and ``checkpoints/`` with
the EMA weights of the chosen checkpoint, for any network. A LoRA run (``finetune=lora``)
leaves it merged, W + (alpha / r) B A in each adapted layer: a run that needs neither peft nor
its base run, and samples as fast as the base.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from diffusion.checks import check_choice, check_writable
from diffusion.commands.launcher import launch
from diffusion.config.keys import check_cli_config
from diffusion.config.runs import run_config
from diffusion.errors import ConfigError
from diffusion.models import DiffusersUNet
from diffusion.runs.load import load_run, newest_checkpoint
from diffusion.schedulers import DDIMScheduler, DDPMScheduler
from diffusion.training.checkpoint import load, save_atomic, step_of

PIPELINES = {"ddim": ("DDIMPipeline", DDIMScheduler), "ddpm": ("DDPMPipeline", DDPMScheduler)}


def export(cfg: DictConfig) -> Path:
    """Write the pipeline folder ``cfg.out`` for run ``cfg.run``; returns it."""
    check_cli_config(cfg, "export")
    check_choice("pipeline", cfg.pipeline, tuple(PIPELINES))
    check_choice("format", cfg.format, ("diffusers", "run"))
    run_cfg = run_config(cfg.run)
    if cfg.format == "run":
        return export_run(cfg, run_cfg)
    target = str(run_cfg.model.get("_target_", ""))
    if run_cfg.get("latent_space"):
        raise ConfigError(f"run={cfg.run} denoises an autoencoder's latents, and diffusers' "
                          "DDPM and DDIM pipelines have no decoder: export pixel-space runs.")
    if not target.endswith("DiffusersUNet"):
        raise ConfigError(f"run={cfg.run} trained model={target.rsplit('.', 1)[-1]}, our own "
                          "network, which diffusers cannot load with these weights: export "
                          "runs trained with model=diffusers_unet (the same settings map onto "
                          "it).")
    process = str(run_cfg.scheduler.get("_target_", ""))
    if process.startswith("diffusion.processes."):
        raise ConfigError(f"run={cfg.run} trained the continuous-time process "
                          f"{process.rsplit('.', 1)[-1]}, which diffusers' DDPM and DDIM "
                          "pipelines cannot run: export runs trained with scheduler=ddpm.")
    out = Path(cfg.out)
    if (out / "model_index.json").is_file() or (out.exists() and any(out.iterdir())):
        raise ConfigError(f"out={out} is not empty: choose a new folder.")
    check_writable(out, "set out= to a writable folder", folder=True, what="the export folder")
    model, scheduler, _ = load_run(cfg.run, cfg.checkpoint)
    if not isinstance(model, DiffusersUNet):  # config.yaml edited since the checks above
        raise ConfigError(f"run={cfg.run} does not hold a diffusers_unet network.")
    pipeline, sampler_cls = PIPELINES[cfg.pipeline]
    sampler = sampler_cls.over(scheduler)
    model.net.save_pretrained(out / "unet")
    sampler.save_pretrained(out / "scheduler")
    (out / "model_index.json").write_text(json.dumps({
        "_class_name": pipeline, "unet": ["diffusers", "UNet2DModel"],
        "scheduler": ["diffusers", type(sampler).__name__]}, indent=2) + "\n")
    print(f"export: {out} (diffusers.{pipeline}.from_pretrained({str(out)!r}))")
    if model.num_classes is not None:
        print(f"note: the run is class-conditional; {pipeline} draws without labels, so load "
              "the UNet (UNet2DModel.from_pretrained(out/'unet')) and pass class_labels "
              f"(0..{model.num_classes - 1}; {model.num_classes} is the null label).")
    return out


def export_run(cfg: DictConfig, run_cfg: DictConfig) -> Path:
    """``format=run``: the run's network (a LoRA run's merged) as a plain run folder."""
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"out={out} is not empty: choose a new folder.")
    check_writable(out, "set out= to a writable folder", folder=True, what="the export folder")
    checkpoint = Path(cfg.checkpoint) if cfg.checkpoint else newest_checkpoint(cfg.run)
    model, _, _ = load_run(cfg.run, checkpoint)
    weights = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    step = step_of(checkpoint)
    updates = int(load(checkpoint)["ema"].get("num_updates", step))
    save_atomic({"step": step, "model": weights, "ema": {"model": weights,
                                                        "num_updates": updates}},
                out / "checkpoints" / checkpoint.name)
    plain = OmegaConf.to_container(run_cfg, resolve=True)
    merged = (plain.get("finetune") or {}).get("method") == "lora"
    plain["finetune"] = {"method": "none"}
    plain["exported_from"] = {"run": str(Path(cfg.run).resolve()),
                              "checkpoint": str(checkpoint.resolve()), "lora_merged": merged}
    (out / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(plain)))
    print(f"export: {out} (a run folder{', the LoRA adapter merged' if merged else ''}: "
          f"python -m diffusion.sample run={out})")
    return out


def main() -> None:
    """``python -m diffusion.export run=<run> out=<folder>``; see the module docstring."""
    launch("export", export, distributed=False)


if __name__ == "__main__":
    main()
