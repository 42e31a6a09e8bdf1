"""A picture of the first samples of a source: look at the shards before training on them.

:func:`preview` reads the first ``samples`` samples (a manifest folder or ``manifest.json``
URL, a brace pattern, or shard URLs), draws their images in a grid with each caption wrapped
under its image, and below the grid one line per audio sample with its duration and
transcript. Drawn with pillow's ``ImageDraw`` and its default font; written as PNG to any
fsspec URL.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import storage
from ..errors import ConfigError, ShardReadError, SourceError, redact
from ..format.manifest import is_shard_source, load_manifest
from ..format.schema import find_member
from ..format.stream import iter_samples

__all__ = [
    "PreviewLayout",
    "PreviewResult",
    "preview",
    "iter_preview_samples",
    "resolve_shard_urls",
    "audio_duration",
]

log = logging.getLogger(__name__)

BACKGROUND = (250, 250, 247)
INK = (25, 25, 25)
MUTED = (110, 110, 110)
FRAME = (215, 215, 210)


@dataclass(frozen=True)
class PreviewLayout:
    """Sizes in pixels. The picture's size is a pure function of these and the counts."""

    columns: int = 4
    thumb: int = 192  # the longer side of each image thumbnail
    caption_lines: int = 4
    font_size: int = 13
    margin: int = 16
    gap: int = 12

    @property
    def line_height(self) -> int:
        return self.font_size + 5

    @property
    def cell_width(self) -> int:
        return self.thumb

    @property
    def cell_height(self) -> int:
        # thumbnail, one line for the key, then the caption lines
        return self.thumb + 4 + self.line_height * (1 + self.caption_lines)

    def grid_shape(self, images: int) -> tuple[int, int]:
        """``(columns, rows)`` of the image grid."""
        if images == 0:
            return 0, 0
        cols = min(self.columns, images)
        return cols, math.ceil(images / cols)

    def size(self, images: int, lines: int) -> tuple[int, int]:
        """``(width, height)`` for ``images`` grid cells and ``lines`` text lines below."""
        cols, rows = self.grid_shape(images)
        grid_w = cols * self.cell_width + max(cols - 1, 0) * self.gap
        width = 2 * self.margin + max(grid_w, 60 * (self.font_size // 2 + 1))
        height = self.margin + self.line_height  # title line
        if rows:
            height += self.gap + rows * self.cell_height + (rows - 1) * self.gap
        if lines:
            height += self.gap + lines * self.line_height
        return width, height + self.margin


@dataclass
class PreviewResult:
    """What was drawn: counts, the grid shape, the picture's size and the text lines."""

    url: str
    samples: int
    images: int
    audio: int
    columns: int
    rows: int
    size: tuple[int, int]
    captions: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # one per audio / text-only sample


def resolve_shard_urls(
    source: str | list[str],
    storage_options: dict[str, Any] | None = None,
    *,
    allowed_prefixes: Sequence[str] = (),
) -> list[str]:
    """Shard URLs for a manifest folder/URL, a brace pattern, a shard URL or a list of them.

    A manifest may name shards outside its own folder only below ``allowed_prefixes`` (as
    ``config.allowed_prefixes`` for the reader). Raises SourceError when the manifest names
    others, or when the source names no shards."""
    if is_shard_source(source):
        urls = storage.expand_urls(source)
    else:
        urls = load_manifest(
            source, storage_options, allowed_prefixes=allowed_prefixes
        ).shard_urls()
    if not urls:
        raise SourceError(f"{redact(str(source))} names no shards", url=str(source))
    return urls


def iter_preview_samples(
    source: str | list[str],
    samples: int,
    storage_options: dict[str, Any] | None = None,
    *,
    allowed_prefixes: Sequence[str] = (),
) -> Iterator[dict]:
    """The first ``samples`` samples of ``source`` in shard order, as member dicts. Raises
    SourceError as :func:`resolve_shard_urls`, ShardReadError when a shard cannot be read."""
    taken = 0
    for url in resolve_shard_urls(source, storage_options, allowed_prefixes=allowed_prefixes):
        if taken >= samples:
            return
        with storage.open_read(url, storage_options) as f:
            try:
                for sample in iter_samples(f, name=url):
                    sample["__url__"] = url
                    yield sample
                    taken += 1
                    if taken >= samples:
                        return
            except ShardReadError as exc:
                raise ShardReadError(
                    f"{exc}. Run `wdstream verify` on the source.", shard=url
                ) from exc.__cause__


def audio_duration(data: bytes) -> float | None:
    """Seconds of encoded audio (WAV, FLAC, OGG, MP3 via soundfile); None if unreadable."""
    import soundfile as sf

    try:
        info = sf.info(io.BytesIO(data))
    except Exception:  # any codec failure: the line says "?"
        return None
    return info.frames / info.samplerate if info.samplerate else None


def _caption(sample: dict) -> str:
    found = find_member(sample, "text")
    if found is not None:
        return found[1].decode("utf-8", "replace").strip()
    if isinstance(sample.get("json"), bytes):
        try:
            meta = json.loads(sample["json"])
        except ValueError:
            return ""
        for key in ("text", "caption", "transcript", "sentence"):
            if isinstance(meta, dict) and isinstance(meta.get(key), str):
                return meta[key].strip()
    return ""


def _wrap(text: str, font, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap by pixel width; the last line ends with an ellipsis if cut."""
    words = text.split()
    lines: list[str] = []
    current = ""
    for word in words:
        while font.getlength(word) > width and len(word) > 1:  # a word longer than the line
            cut = len(word)
            while cut > 1 and font.getlength(word[:cut]) > width:
                cut -= 1
            if current:
                lines.append(current)
                current = ""
            lines.append(word[:cut])
            word = word[cut:]
        candidate = f"{current} {word}".strip()
        if font.getlength(candidate) <= width:
            current = candidate
        else:
            lines.append(current)
            current = word
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and font.getlength(last + "…") > width:
            last = last[:-1]
        lines = lines[: max_lines - 1] + [last.rstrip() + "…"]
    return lines


def _fit(text: str, font, width: int) -> str:
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def preview(
    source: str | list[str],
    out: str,
    *,
    samples: int = 16,
    layout: PreviewLayout | None = None,
    storage_options: dict[str, Any] | None = None,
    allowed_prefixes: Sequence[str] = (),
) -> PreviewResult:
    """Draw the first ``samples`` samples of ``source`` into a PNG at ``out`` (any URL).

    ``allowed_prefixes``: where besides its own folder a manifest may name shards (as
    ``config.allowed_prefixes``). Raises SourceError / ShardReadError when the source cannot
    be read or its manifest names shards elsewhere, ConfigError for a bad sample count.
    """
    from PIL import Image, ImageDraw, ImageFont, ImageOps

    if samples < 1:
        raise ConfigError(f"--samples must be at least 1, not {samples}")
    layout = layout or PreviewLayout()
    font = ImageFont.load_default(size=layout.font_size)
    items = list(
        iter_preview_samples(source, samples, storage_options, allowed_prefixes=allowed_prefixes)
    )

    cells: list[tuple[str, Any, str]] = []  # key, thumbnail or None, caption
    lines: list[str] = []
    n_audio = 0
    for sample in items:
        key = str(sample["__key__"])
        caption = _caption(sample)
        image = find_member(sample, "image")
        audio = find_member(sample, "audio")
        if image is not None:
            try:
                img = Image.open(io.BytesIO(image[1]))
                img.draft("RGB", (layout.thumb, layout.thumb))  # fast JPEG downscale
                img = ImageOps.exif_transpose(img).convert("RGB")
                # fit the cell: shrink large images, enlarge small ones (MNIST's 28 px)
                img = ImageOps.contain(img, (layout.thumb, layout.thumb), Image.Resampling.LANCZOS)
            except Exception as exc:  # draw a placeholder and say why
                log.warning("preview: cannot decode image %s.%s: %s", key, image[0], exc)
                img = None
            cells.append((key, img, caption))
        if audio is not None:
            n_audio += 1
            seconds = audio_duration(audio[1])
            shown = f"{seconds:.2f} s" if seconds is not None else "? s (unreadable)"
            lines.append(f"{key}  [{audio[0]} {shown}]  {caption or '(no transcript)'}")
        elif image is None:
            lines.append(f"{key}  [text]  {caption or '(empty)'}")

    cols, rows = layout.grid_shape(len(cells))
    width, height = layout.size(len(cells), len(lines))
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    m, lh = layout.margin, layout.line_height
    title = (
        f"{redact(str(source) if isinstance(source, str) else source[0])}: "
        f"{len(items)} samples, {len(cells)} images, {n_audio} audio"
    )
    draw.text((m, m), _fit(title, font, width - 2 * m), fill=INK, font=font)
    y0 = m + lh + layout.gap
    captions: list[str] = []
    for i, (key, img, caption) in enumerate(cells):
        x = m + (i % cols) * (layout.cell_width + layout.gap)
        y = y0 + (i // cols) * (layout.cell_height + layout.gap)
        draw.rectangle([x, y, x + layout.thumb - 1, y + layout.thumb - 1], outline=FRAME)
        if img is not None:
            canvas.paste(
                img, (x + (layout.thumb - img.width) // 2, y + (layout.thumb - img.height) // 2)
            )
        else:
            draw.text((x + 8, y + layout.thumb // 2), "undecodable image", fill=MUTED, font=font)
        ty = y + layout.thumb + 4
        draw.text((x, ty), _fit(key, font, layout.cell_width), fill=MUTED, font=font)
        wrapped = _wrap(caption, font, layout.cell_width, layout.caption_lines)
        for j, text in enumerate(wrapped):
            draw.text((x, ty + (j + 1) * lh), text, fill=INK, font=font)
        captions.append("\n".join(wrapped))
    ly = y0 + (rows * layout.cell_height + (rows - 1) * layout.gap + layout.gap if rows else 0)
    for k, line in enumerate(lines):
        draw.text((m, ly + k * lh), _fit(line, font, width - 2 * m), fill=INK, font=font)

    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=True)
    storage.write_bytes(out, buf.getvalue(), storage_options)
    log.info(
        "preview of %d samples (%d images, %d audio) written to %s",
        len(items),
        len(cells),
        n_audio,
        redact(out),
    )
    return PreviewResult(
        url=out,
        samples=len(items),
        images=len(cells),
        audio=n_audio,
        columns=cols,
        rows=rows,
        size=(width, height),
        captions=captions,
        lines=lines,
    )
