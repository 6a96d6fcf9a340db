"""The finetune_mnist_to_fashion tables from its run folders: per run the parameters that
trained, the size of the weights a checkpoint keeps (the EMA network as saved: the adapter
alone for LoRA) and of the whole checkpoint file (with the optimizer's state), the median
training step time of the log windows (the periodic FID and grids excluded), and the periodic
FID by step.

    python experiments/finetune_mnist_to_fashion/table.py [runs/finetune_mnist_to_fashion]
"""

from __future__ import annotations

import io
import json
import statistics
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

RUNS = ("lora1", "lora4", "lora16", "full", "scratch")


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
            if line.strip()]


def yaml_batch(run: Path) -> int:
    """The run's batch size, from its config.yaml."""
    return OmegaConf.load(run / "config.yaml").data.batch_size


def _weights_bytes(state: dict) -> int:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.tell()


def main(root: Path) -> None:
    rows, fids, steps_seen, floors = [], {}, set(), set()
    for name in RUNS:
        run = root / name
        if not (run / "metrics.jsonl").is_file():
            continue
        records = _records(run)
        checkpoint = sorted((run / "checkpoints").glob("step_*.pt"))[-1]
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        weights = state["ema"]["model"]
        trained = sum(v.numel() for v in weights.values() if v.is_floating_point())
        rates = [r["train/images_per_sec"] for r in records if "train/images_per_sec" in r]
        batch = int(yaml_batch(run))
        step = f"{1000 * batch / statistics.median(rates):.0f} ms" if rates else "(not logged)"
        rows.append(f"| {name} | {trained:,} | {_weights_bytes(weights) / 1024:,.0f} KiB | "
                    f"{checkpoint.stat().st_size / 1024:,.0f} KiB | {step} |")
        fids[name] = {r["step"]: r["eval/fid"] for r in records if "eval/fid" in r}
        floors |= {r["eval/fid_floor"] for r in records if "eval/fid_floor" in r}
        steps_seen |= set(fids[name])
    print("| run | parameters saved (trained) | weights file | checkpoint file | step time |")
    print("| --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    print()
    if floors:
        print("data floor: " + ", ".join(f"{f:.2f}" for f in sorted(floors)))
    steps = sorted(steps_seen)
    if not steps:  # a run without the periodic FID (EVAL_EVERY=0)
        return
    print("| run | " + " | ".join(f"FID @ {s}" for s in steps) + " |")
    print("| --- |" + " --- |" * len(steps))
    for name, by_step in fids.items():
        print(f"| {name} | " + " | ".join(f"{by_step[s]:.1f}" if s in by_step else ""
                                          for s in steps) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/finetune_mnist_to_fashion"))
