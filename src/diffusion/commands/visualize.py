"""``python -m diffusion.visualize <figure> ...``: pictures of the diffusion process.

    python -m diffusion.visualize forward data=mnist            # linear vs cosine forward process
    python -m diffusion.visualize forward run=<run folder>      # same, on the run's data
    python -m diffusion.visualize losses run=<run folder>       # loss curves from metrics.jsonl
    python -m diffusion.visualize fid run=<run folder>          # FID vs network evaluations

With ``run=`` the figure goes to ``<run>/figures/<figure>.png`` (and to W&B when the run logs
there); otherwise to ``out=`` or ``./<figure>_<data>.png``. The denoising chain is drawn by
``python -m diffusion.sample ... chain=true``.
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from diffusion.checks import check_choice, check_writable
from diffusion.commands.launcher import launch
from diffusion.config.build import logger_configs
from diffusion.config.options import check_visualize_options
from diffusion.config.runs import run_config
from diffusion.reporting import figures as viz
from diffusion.reporting.jobs import run_label
from diffusion.runs.records import read_eval
from diffusion.training.loggers import WandbLogger, read_metrics

FIGURES = ("forward", "losses", "fid")


def _log_to_wandb(run: Path, name: str, path: Path) -> None:
    """Add the figure to the run's W&B run, when it has one (resumed by its saved id)."""
    id_file = run / "wandb_id.txt"
    logger_cfg = next((c for c in logger_configs(run_config(run).get("logger")).values()
                       if str(c._target_).endswith("WandbLogger")), None)
    if not id_file.is_file() or logger_cfg is None:
        return
    logger = WandbLogger(run, project=logger_cfg.get("project", "diffusion"),
                         entity=logger_cfg.get("entity"), mode=logger_cfg.get("mode", "auto"),
                         resume_id=id_file.read_text().strip())
    step = max((r["step"] for r in read_metrics(run / "metrics.jsonl")), default=0)
    logger.log_image(f"figures/{name}", path, step)
    logger.finish()


def visualize(cfg: DictConfig, overrides: list[str] | None = None) -> Path:
    """Draw ``cfg.figure``; returns the file written. ``overrides``: the command line, so a
    setting the figure does not read is refused."""
    check_choice("figure", cfg.figure, FIGURES,
                 note=" (e.g. python -m diffusion.visualize forward data=mnist)")
    check_visualize_options(cfg, overrides or [])
    run = Path(cfg.run) if cfg.run else None
    if run is None and cfg.figure != "forward":
        raise ValueError(f"python -m diffusion.visualize {cfg.figure} needs run=<run folder>.")
    data = run_config(run).data if run is not None else cfg.data
    default = (run / "figures" / f"{cfg.figure}.png" if run is not None
               else Path(f"{cfg.figure}_{data.name}.png"))
    out = Path(cfg.out) if cfg.out else default
    check_writable(out, "set out= to a writable file" if cfg.out
                   else "set out=<file> to write the figure elsewhere")
    if cfg.figure == "forward":
        path = viz.forward_figure(data, out, tuple(cfg.schedules), cfg.num_train_timesteps,
                              cfg.images, cfg.columns, cfg.split, cfg.seed)
    elif cfg.figure == "losses":
        path = viz.plot_loss_curves({run_label(run): read_metrics(run / "metrics.jsonl")}, out)
    else:
        entries = list(read_eval(run).values())
        if not entries:
            raise ValueError(f"{run} has no eval.json yet: run python -m diffusion.evaluate "
                             f"run={run} first.")
        path = viz.plot_fid_vs_steps({run_label(run): entries}, out)
    if run is not None and cfg.wandb:
        _log_to_wandb(run, cfg.figure, path)
    print(f"{cfg.figure}: {path}")
    return path


def _work(cfg: DictConfig) -> None:
    visualize(cfg, list(HydraConfig.get().overrides.task))


def _figure_word(args: list[str]) -> list[str]:
    """The first bare word names the figure: ``visualize forward`` is ``figure=forward``."""
    if args and "=" not in args[0] and not args[0].startswith("-"):
        return [f"figure={args[0]}", *args[1:]]
    return args


def main() -> None:
    """``python -m diffusion.visualize <figure> ...``; see the module docstring."""
    launch("visualize", _work, rewrite=_figure_word, distributed=False)


if __name__ == "__main__":
    main()
