"""The user's per-sample transform (``make_loader(..., transform=)``), seeded per sample.

:class:`TransformedDecoder` runs the decoder, then ``transform(sample, generator)`` with a
``torch.Generator`` seeded by :func:`transform_seed`: a pure function of ``(config.seed,
epoch, source name, sample key)``, so the same sample gets the same augmentation in any
worker, rank, layout or resumed run, and another one in the next epoch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import WdstreamError
from .seeds import derive_seed

__all__ = ["TransformedDecoder", "TransformError", "transform_seed", "with_transform"]


class TransformError(WdstreamError, RuntimeError):
    """The user's transform ended with ``SystemExit`` (or another exception that is not an
    ``Exception``): raised in its place, naming it, the sample and the source. Inside a
    DataLoader worker a SystemExit would end the worker, and torch would report a lost
    worker (or a missing shared-memory file) instead of the cause."""


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
        try:
            result = self.transform(out, generator)
        except (Exception, KeyboardInterrupt):
            raise  # an Exception reaches the training loop as itself; Ctrl-C stays Ctrl-C
        except BaseException as exc:  # SystemExit, GeneratorExit: would kill a worker
            name = getattr(self.transform, "__name__", type(self.transform).__name__)
            raise TransformError(
                f"transform {name} raised {type(exc).__name__}({exc}) on sample {out['key']} "
                f"of {self.source!r}: a transform must return the sample, or raise "
                f"wdstream.SampleError to skip it",
                key=out["key"],
            ) from exc
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
