"""Per-component timings behind the fast-path choices in README.md: the EMA update, the AdamW
step and the attention block, each way they can be written, on the MNIST-recipe network
(6.47M parameters; attention at 14x14 with 128 channels and 4 heads, batch 32).

    python experiments/bench/components.py [--threads 1] [--repeats 7]

Every variant runs in turns with the others (median of repeats), so a busy machine slows
them alike. Prints milliseconds per call; lower is better.
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel
from einops import rearrange

from diffusion.commands.benchmarks.measure import format_table, time_interleaved, warm_up
from diffusion.models import AttentionUNet
from diffusion.models.layers import AttentionBlock
from diffusion.training.ema import EMA


class StridedAttention(AttentionBlock):
    """The attention block as first written: q, k, v cut from the 1x1-conv output, so their
    head dimension is strided and SDPA takes its unfused path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(self.norm(x)),
                            "b (three heads d) h w -> three b heads (h w) d",
                            three=3, heads=self.num_heads)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(rearrange(out, "b heads (h w) d -> b (heads d) h w", h=x.shape[-2]))


def attention_calls() -> dict:
    """Forward + backward of one attention block, both layouts, with the same weights."""
    fused = AttentionBlock(128, 4, 32)
    torch.nn.init.normal_(fused.proj.weight, std=0.02)
    strided = StridedAttention(128, 4, 32)
    strided.load_state_dict(fused.state_dict())
    x = torch.randn(32, 128, 14, 14, requires_grad=True)

    def fwd_bwd(block):
        return lambda: block(x).sum().backward()

    return {"attention fwd+bwd: strided q/k/v (unfused SDPA)": fwd_bwd(strided),
            "attention fwd+bwd: ours, unit-stride q/k/v (flash SDPA)": fwd_bwd(fused)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    model = AttentionUNet(in_channels=1, image_size=28, base_channels=64, channel_mult=(1, 2, 2))
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p)

    ema = EMA(model, 0.9999)
    every4 = EMA(model, 0.9999, update_every=4)
    shadow = copy.deepcopy(model).requires_grad_(False)
    step = {"every4": 0}

    @torch.no_grad()
    def per_tensor_lerp():
        for e, p in zip(shadow.parameters(), params, strict=True):
            e.lerp_(p, 1e-4)

    def ema_every4():
        step["every4"] += 1
        every4.update(model, step["every4"])

    diffusers_ema = EMAModel(params, decay=0.9999, use_ema_warmup=True, power=3 / 4)
    diffusers_ema_foreach = EMAModel(params, decay=0.9999, use_ema_warmup=True, power=3 / 4,
                                     foreach=True)
    emas = {
        "EMA: ours, one foreach lerp": lambda: ema.update(model, 1),
        "EMA: ours, update_every=4 (per step)": ema_every4,
        "EMA: per-tensor lerp loop": per_tensor_lerp,
        "EMA: diffusers EMAModel (default)": lambda: diffusers_ema.step(params),
        "EMA: diffusers EMAModel(foreach=True)": lambda: diffusers_ema_foreach.step(params),
    }
    optimizers = {
        f"AdamW: {name}": torch.optim.AdamW(copy.deepcopy(model).parameters(), lr=1e-4, **kw)
        for name, kw in (("for-loop (CPU default)", {"foreach": False}),
                         ("foreach", {"foreach": True}), ("fused", {"fused": True}))
    }
    for opt in optimizers.values():
        for p in (p for g in opt.param_groups for p in g["params"]):
            p.grad = torch.randn_like(p)
    calls = {**emas, **{name: opt.step for name, opt in optimizers.items()}, **attention_calls()}
    warm = {name: warm_up(fn, cpu, 3) for name, fn in calls.items()}
    timings = time_interleaved(calls, cpu, args.repeats, 0.5, warm)
    rows = [[name, f"{1000 * t.median:.2f}"] for name, t in timings.items()]
    print(f"{sum(p.numel() for p in params):,} parameters, {torch.get_num_threads()} thread(s)")
    print(format_table(["component", "ms per call"], rows))


if __name__ == "__main__":
    main()
