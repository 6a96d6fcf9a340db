"""Drawing the noise of a reverse step or of x_T as diffusers does, so that the same
generators give the same numbers here and there, on every device."""

from __future__ import annotations

import torch

Tensor = torch.Tensor

Generators = torch.Generator | list[torch.Generator] | tuple[torch.Generator, ...] | None
"""A noise source as diffusers takes one: a generator, one per sample, or None (global RNG)."""


def randn_tensor(shape, generator: Generators, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normal noise of ``shape``, drawn as diffusers' ``randn_tensor`` does: on the
    generator's device in ``dtype``, then moved to ``device`` (None: left there; the CPU
    without a generator), so a CPU generator gives the same numbers on every device. A list
    of generators draws sample i (row i of the first dimension) from generator i, so each
    sample depends on its own generator only."""
    if isinstance(generator, list | tuple):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for {shape[0]} samples: pass "
                             "one generator per sample, or a single one.")
        rows = [randn_tensor((1, *shape[1:]), g, device, dtype) for g in generator]
        return torch.cat(rows) if device is not None else torch.cat([r.cpu() for r in rows])
    source = generator.device if generator is not None else torch.device(device or "cpu")
    target = torch.device(device) if device is not None else source
    # drawn into pinned memory and copied without blocking: no host-device sync per step
    pinned = source.type == "cpu" and target.type == "cuda"
    noise = torch.randn(tuple(shape), generator=generator, device=source, dtype=dtype,
                        pin_memory=pinned)
    return noise.to(target, non_blocking=pinned)
