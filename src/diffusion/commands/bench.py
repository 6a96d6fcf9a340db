"""``python -m diffusion.bench``: how fast the configured model trains, samples and loads data.

    python -m diffusion.bench                                        # unet_attn on MNIST
    python -m diffusion.bench vs=diffusers                           # + diffusers side by side
    python -m diffusion.bench model=unet_attn data=mnist data.batch_size=64 \\
        trainer.precision=bf16 trainer.compile=true

Composes ``conf/bench.yaml`` (the training config groups plus ``bench.*``), prints a table and
writes the JSON record (``bench.out``, by default under ``experiments/bench/``).
``--vs diffusers`` is accepted as a spelling of ``vs=diffusers``.
"""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from diffusion.commands.benchmarks.run import output_path, report, run_benchmark, write_record
from diffusion.commands.launcher import launch


def _hydra_argv(argv: list[str]) -> list[str]:
    """``--vs diffusers`` / ``--vs=diffusers`` -> ``vs=diffusers``; everything else as is."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--vs" and i + 1 < len(argv):
            out.append(f"vs={argv[i + 1]}")
            i += 2
            continue
        out.append(f"vs={argv[i][5:]}" if argv[i].startswith("--vs=") else argv[i])
        i += 1
    return out


def bench(cfg: DictConfig, command: str = "python -m diffusion.bench") -> dict:
    """Run the benchmark, print its table and write its JSON record; returns the record."""
    record = run_benchmark(cfg, command)
    path = write_record(record, output_path(cfg, record["device"], record["precision"]))
    print(report(record))
    for name, profile in record.get("profiles", {}).items():
        for operation, table in profile.items():
            print(f"\n{name} {operation}: top ops by self time\n{table}")
    print(f"\nWritten: {path}")
    return record


def _work(cfg: DictConfig) -> None:
    bench(cfg, " ".join(["python -m diffusion.bench", *HydraConfig.get().overrides.task]))


def main() -> None:
    """``python -m diffusion.bench ...``; see the module docstring."""
    launch("bench", _work, rewrite=_hydra_argv, distributed=False)


if __name__ == "__main__":
    main()
