"""``python -m diffusion.visualize <figure> ...``: pictures of the diffusion process.

    python -m diffusion.visualize forward data=mnist            # linear vs cosine forward process
    python -m diffusion.visualize forward run=<run folder>      # same, on the run's data
    python -m diffusion.visualize losses run=<run folder>       # loss curves from metrics.jsonl
    python -m diffusion.visualize fid run=<run folder>          # FID vs sampling steps (eval.json)

With ``run=`` the figure goes to ``<run>/figures/<figure>.png`` (and to W&B when the run logs
there); otherwise to ``out=`` or ``./<figure>_<data>.png``. The denoising chain is drawn by
``python -m diffusion.sample ... chain=true``.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from diffusion.checks import check_choice
from diffusion.commands.launcher import launch
from diffusion.config.runs import run_config
from diffusion.reporting import figures as viz
from diffusion.runs.records import read_eval
from diffusion.training.loggers import WandbLogger, read_metrics

FIGURES = ("forward", "losses", "fid")


def _log_to_wandb(run: Path, name: str, path: Path) -> None:
    """Add the figure to the run's W&B run, when it has one (resumed by its saved id)."""
    id_file = run / "wandb_id.txt"
    logger_cfg = run_config(run).get("logger") or {}
    if not id_file.is_file() or "_target_" not in logger_cfg:
        return
    logger = WandbLogger(run, project=logger_cfg.get("project", "diffusion"),
                         entity=logger_cfg.get("entity"), mode=logger_cfg.get("mode", "auto"),
                         resume_id=id_file.read_text().strip())
    step = max((r["step"] for r in read_metrics(run / "metrics.jsonl")), default=0)
    logger.log_image(f"figures/{name}", path, step)
    logger.finish()


def visualize(cfg: DictConfig) -> Path:
    """Draw ``cfg.figure``; returns the file written."""
    check_choice("figure", cfg.figure, FIGURES,
                 note=" (e.g. python -m diffusion.visualize forward data=mnist)")
    run = Path(cfg.run) if cfg.run else None
    if run is None and cfg.figure != "forward":
        raise ValueError(f"python -m diffusion.visualize {cfg.figure} needs run=<run folder>.")
    data = run_config(run).data if run is not None else cfg.data
    default = (run / "figures" / f"{cfg.figure}.png" if run is not None
               else Path(f"{cfg.figure}_{data.name}.png"))
    out = Path(cfg.out) if cfg.out else default
    if cfg.figure == "forward":
        path = viz.forward_figure(data, out, tuple(cfg.schedules), cfg.num_train_timesteps,
                              cfg.images, cfg.columns, cfg.split, cfg.seed)
    elif cfg.figure == "losses":
        path = viz.plot_loss_curves({run.name: read_metrics(run / "metrics.jsonl")}, out)
    else:
        entries = list(read_eval(run).values())
        if not entries:
            raise ValueError(f"{run} has no eval.json yet: run python -m diffusion.evaluate "
                             f"run={run} first.")
        path = viz.plot_fid_vs_steps({run.name: entries}, out)
    if run is not None and cfg.wandb:
        _log_to_wandb(run, cfg.figure, path)
    print(f"{cfg.figure}: {path}")
    return path


def _figure_word(args: list[str]) -> list[str]:
    """The first bare word names the figure: ``visualize forward`` is ``figure=forward``."""
    if args and "=" not in args[0] and not args[0].startswith("-"):
        return [f"figure={args[0]}", *args[1:]]
    return args


def main() -> None:
    """``python -m diffusion.visualize <figure> ...``; see the module docstring."""
    launch("visualize", visualize, rewrite=_figure_word, distributed=False)


if __name__ == "__main__":
    main()
