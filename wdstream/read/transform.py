"""The user's per-sample transform (``make_loader(..., transform=)``), seeded per sample.

:class:`TransformedDecoder` runs the decoder, then ``transform(sample, generator)`` with a
``torch.Generator`` seeded by :func:`transform_seed`: a pure function of ``(config.seed,
epoch, source name, sample key)``, so the same sample gets the same augmentation in any
worker, rank, layout or resumed run, and another one in the next epoch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .seeds import derive_seed

__all__ = ["TransformedDecoder", "transform_seed", "with_transform"]


def transform_seed(seed: int, epoch: int, source: str, key: str) -> int:
    """The seed of a sample's transform (module doc)."""
    return derive_seed(seed, epoch, source, key, "transform")


class TransformedDecoder:
    """The decoder, then ``transform(sample, generator)`` with a ``torch.Generator`` seeded by
    :func:`transform_seed`. Picklable when ``decoder`` and ``transform`` are. ``transform``
    returns the sample (or None after changing it in place); a SampleError it raises counts
    the sample as bad, like a decoding error."""

    def __init__(
        self,
        decoder: Callable[[dict], dict],
        transform: Callable,
        *,
        seed: int,
        epoch: int,
        source: str,
    ):
        self.decoder, self.transform = decoder, transform
        self.seed, self.epoch, self.source = seed, epoch, source

    def __call__(self, item: dict) -> dict:
        out = self.decoder(item)
        generator = torch.Generator()
        generator.manual_seed(transform_seed(self.seed, self.epoch, self.source, out["key"]))
        result = self.transform(out, generator)
        return out if result is None else result


def with_transform(
    decoder: Callable[[dict], dict],
    transform: Callable | None,
    *,
    seed: int,
    epoch: int,
    source: str,
) -> Callable[[dict], dict]:
    """The decode stage's function for one source and epoch: ``decoder``, then ``transform``
    when there is one."""
    if transform is None:
        return decoder
    return TransformedDecoder(decoder, transform, seed=seed, epoch=epoch, source=source)
