"""Argument checks for the backbones: every bad size or option fails at construction with a
ValueError that names the argument (the config builders prefix it with ``model.``), before
any layer is allocated."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from diffusion.checks import check_int, check_number

check_positive_int = check_int  # the name the backbones import


def check_int_tuple(name: str, values, allow_empty: bool = False) -> tuple[int, ...]:
    """Normalise a list/tuple/ListConfig of positive ints (Hydra hands over ListConfig)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"{name} must be a sequence of positive integers, got {values!r}.")
    values = tuple(values)
    if not values and not allow_empty:
        raise ValueError(f"{name} must be a non-empty sequence of positive integers.")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a sequence of positive integers, got {values!r}.")
    return values


def check_dropout(dropout) -> float:
    return check_number("dropout", dropout, minimum=0, below=1, note=" (a probability)")


def check_norm_groups(norm_groups, channels: Iterable[int]) -> int:
    """GroupNorm needs every channel count to split into `norm_groups` equal groups."""
    check_positive_int("norm_groups", norm_groups)
    widths = sorted(set(channels))
    if any(c % norm_groups for c in widths):
        raise ValueError(
            f"norm_groups={norm_groups} must divide every block width {widths}; "
            "choose base_channels as a multiple of norm_groups."
        )
    return norm_groups


def check_io(in_channels, out_channels, image_size) -> tuple[int, int]:
    """Validate the arguments every backbone shares; out_channels defaults to in_channels."""
    in_channels = check_positive_int("in_channels", in_channels)
    if out_channels is None:
        out_channels = in_channels
    check_positive_int("out_channels", out_channels)
    check_positive_int("image_size", image_size)
    return in_channels, out_channels


def check_num_classes(num_classes) -> int | None:
    if num_classes is None:
        return None
    return check_positive_int("num_classes", num_classes)




@dataclass(frozen=True)
class BackboneArgs:
    """The arguments every backbone shares, checked: widths are ``base_channels * m`` for m in
    ``channel_mult``, one level each."""

    in_channels: int
    out_channels: int
    base_channels: int
    channel_mult: tuple[int, ...]
    num_classes: int | None
    cond_channels: int = 0

    @property
    def widths(self) -> list[int]:
        return [self.base_channels * m for m in self.channel_mult]

    @property
    def input_channels(self) -> int:
        """What the first layer takes: x's channels and the conditioning image's beside them."""
        return self.in_channels + self.cond_channels


def check_backbone(in_channels, out_channels, image_size, base_channels, channel_mult,
                   num_classes, cond_channels=0) -> BackboneArgs:
    """Check what the three backbones share; ``out_channels`` defaults to ``in_channels``."""
    in_channels, out_channels = check_io(in_channels, out_channels, image_size)
    return BackboneArgs(in_channels, out_channels,
                        check_positive_int("base_channels", base_channels),
                        check_int_tuple("channel_mult", channel_mult),
                        check_num_classes(num_classes),
                        check_positive_int("cond_channels", cond_channels, minimum=0))
