"""``wdstream preview``: a grid of images with captions plus a line per audio sample."""

from __future__ import annotations

import io
import math
import random

import fsspec
import pytest
from PIL import Image

from wdstream.cli import main
from wdstream.errors import SourceError
from wdstream.format.synthetic import synthetic_sample
from wdstream.read.preview import (
    BACKGROUND,
    PreviewLayout,
    audio_duration,
    iter_preview_samples,
    preview,
    resolve_shard_urls,
)
from wdstream.write.sources.synthetic import write_synthetic


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """10 synthetic samples (text, image, 0.5 s audio) in 3 shards, with a manifest."""
    folder = str(tmp_path_factory.mktemp("synth") / "ds")
    write_synthetic(folder, 10, seed=3, max_samples_per_shard=4)
    return folder


@pytest.mark.parametrize("samples, columns", [(7, 4), (10, 3), (1, 4), (4, 4)])
def test_grid_matches_the_sample_count(synth, tmp_path, samples, columns):
    out = tmp_path / "grid.png"
    layout = PreviewLayout(columns=columns, thumb=96)
    result = preview(synth, str(out), samples=samples, layout=layout)

    cols = min(columns, samples)
    rows = math.ceil(samples / cols)
    assert (result.samples, result.images, result.audio) == (samples, samples, samples)
    assert (result.columns, result.rows) == (cols, rows)
    img = Image.open(out)
    assert img.format == "PNG"
    assert img.size == result.size == layout.size(samples, samples)
    # every cell holds a thumbnail: its centre is not the background colour
    y0 = layout.margin + layout.line_height + layout.gap
    for i in range(samples):
        x = layout.margin + (i % cols) * (layout.cell_width + layout.gap) + layout.thumb // 2
        y = y0 + (i // cols) * (layout.cell_height + layout.gap) + layout.thumb // 2
        assert img.convert("RGB").getpixel((x, y)) != BACKGROUND
    # and no cell past the last one: the next slot in the last row is background
    if samples % cols:
        i = samples
        x = layout.margin + (i % cols) * (layout.cell_width + layout.gap) + layout.thumb // 2
        y = y0 + (i // cols) * (layout.cell_height + layout.gap) + layout.thumb // 2
        assert img.convert("RGB").getpixel((x, y)) == BACKGROUND


def test_audio_lines_give_duration_and_transcript(synth, tmp_path):
    result = preview(synth, str(tmp_path / "g.png"), samples=5)
    assert len(result.lines) == 5
    for i, line in enumerate(result.lines):
        text = synthetic_sample(i, seed=3)["txt"].decode()
        assert line.startswith(f"00000_{i:09d}  [wav 0.50 s]  ")
        assert line.endswith(text)


def test_captions_are_wrapped_under_each_image(synth, tmp_path):
    layout = PreviewLayout(thumb=96, caption_lines=20)
    result = preview(synth, str(tmp_path / "g.png"), samples=6, layout=layout)
    for i, caption in enumerate(result.captions):
        text = synthetic_sample(i, seed=3)["txt"].decode()
        assert caption.split() == text.split()  # every word, nothing lost at this length
        assert len(caption.splitlines()) > 1 or len(text) < 14


def test_long_captions_are_cut_with_an_ellipsis(synth, tmp_path):
    layout = PreviewLayout(thumb=64, caption_lines=1)
    result = preview(synth, str(tmp_path / "g.png"), samples=4, layout=layout)
    assert all(len(c.splitlines()) == 1 for c in result.captions)
    assert any(c.endswith("…") for c in result.captions)


def test_sources_brace_pattern_shard_list_and_manifest_agree(synth, tmp_path):
    urls = resolve_shard_urls(synth)
    assert len(urls) == 3
    pattern = synth + "/shard-00000-{00000..00002}.tar"
    assert resolve_shard_urls(pattern) == urls
    keys = [s["__key__"] for s in iter_preview_samples(urls, 10)]
    assert keys == [f"00000_{i:09d}" for i in range(10)]
    assert [s["__key__"] for s in iter_preview_samples(pattern, 6)] == keys[:6]
    assert [s["__key__"] for s in iter_preview_samples(urls[1], 99)] == keys[4:8]


def test_more_samples_than_the_source_has(synth, tmp_path):
    result = preview(synth, str(tmp_path / "g.png"), samples=50)
    assert result.samples == result.images == 10


def test_text_only_and_audio_only_samples(tmp_path):
    folder = str(tmp_path / "t")
    write_synthetic(folder, 3, modalities=("text",))
    result = preview(folder, "memory://wdstream-preview-test/t.png", samples=3)
    assert (result.images, result.audio, result.rows) == (0, 0, 0)
    assert [line.split("  ")[1] for line in result.lines] == ["[text]"] * 3
    with fsspec.open("memory://wdstream-preview-test/t.png", "rb") as f:
        assert Image.open(io.BytesIO(f.read())).size == PreviewLayout().size(0, 3)

    folder = str(tmp_path / "a")
    write_synthetic(folder, 2, modalities=("text", "audio"))
    result = preview(folder, str(tmp_path / "a.png"))
    assert (result.images, result.audio, len(result.lines)) == (0, 2, 2)


def test_audio_duration_of_flac_and_garbage():
    from wdstream.demo.data import encode_audio

    assert audio_duration(encode_audio(random.Random(0), 1.25, 16000, "FLAC")) == 1.25
    assert audio_duration(b"fLaC not really") is None


def test_cli_writes_the_png(synth, tmp_path):
    out = tmp_path / "cli.png"
    assert main(["preview", synth, "--out", str(out), "--samples", "5", "--columns", "5"]) == 0
    layout = PreviewLayout(columns=5)
    assert Image.open(out).size == layout.size(5, 5)


def test_cli_and_library_report_a_missing_source(tmp_path):
    with pytest.raises(SourceError, match="manifest"):
        preview(str(tmp_path / "nothing"), str(tmp_path / "x.png"))
    assert main(["preview", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.png")]) == 2
    assert not (tmp_path / "x.png").exists()


def test_a_manifest_naming_shards_outside_its_folder_is_refused_unless_allowed(tmp_path):
    """As the reader (config.allowed_prefixes): a manifest cannot grant itself other folders."""
    from helpers import write_outside_manifest

    meta, prefix = write_outside_manifest(str(tmp_path))
    with pytest.raises(SourceError, match=r"shards\[0\]\.url.*allowed_prefixes"):
        preview(meta, str(tmp_path / "no.png"))
    assert not (tmp_path / "no.png").exists()
    with pytest.raises(SourceError, match="allowed_prefixes"):
        resolve_shard_urls(meta, allowed_prefixes=["/somewhere/else/"])
    result = preview(meta, str(tmp_path / "ok.png"), samples=4, allowed_prefixes=[prefix])
    assert result.samples == result.images == 4
    keys = [s["__key__"] for s in iter_preview_samples(meta, 6, allowed_prefixes=[prefix])]
    assert keys == [f"00000_{i:09d}" for i in range(6)]
