"""rows/encode.py: the members, and their bytes, that one row becomes.

Encoded images and audio pass through byte for byte under their format's extension; decoded
ones are encoded once; the text and the ``.json`` are exact bytes (shards are pinned by sha256,
so these bytes are a contract)."""

from __future__ import annotations

import datetime
import io
import json
import random

import numpy as np
import pytest

from wdstream.demo.data import encode_audio
from wdstream.errors import ColumnError, SkipSample
from wdstream.rows.columns import ColumnMap
from wdstream.rows.encode import RowEncoder, encode_pil_image, encoded_bytes
from wdstream.rows.paths import ReadRoots


def _image(fmt: str, mode: str = "RGB") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, (12, 8), (30, 60, 90)).save(buf, format=fmt)
    return buf.getvalue()


def _clip(fmt: str = "FLAC") -> bytes:
    return encode_audio(random.Random(0), 0.05, fmt=fmt)


# ------------------------------------------------------------------ a row's members


def test_a_row_becomes_its_members_byte_for_byte():
    png, flac = _image("PNG"), _clip()
    columns = ColumnMap(
        image="image",
        audio="audio",
        text=("caption", "title"),
        extra=("n", "when", "note"),
        binary=("raw blob",),
    )
    row = {
        "image": {"bytes": png, "path": "img.png"},
        "audio": {"bytes": flac, "path": None},
        "caption": "a cat",
        "title": None,
        "n": 3,
        "when": datetime.date(2024, 1, 2),
        "note": "café",
        "raw blob": b"\x00\x01",
    }
    assert RowEncoder(columns, "src")(row, "k") == {
        "txt": b"a cat\n",
        "json": '{"n": 3, "note": "café", "source": "src", "when": "2024-01-02"}'.encode(),
        "raw_blob.bin": b"\x00\x01",
        "png": png,
        "flac": flac,
    }


def test_image_ext_and_audio_ext_rename_members_without_touching_bytes():
    png, wav = _image("PNG"), _clip("WAV")
    enc = RowEncoder(ColumnMap(image="i", audio="a", image_ext="jpg", audio_ext="flac"), "s")
    fields = enc({"i": {"bytes": png, "path": None}, "a": wav}, "k")
    assert fields["jpg"] == png and fields["flac"] == wav
    assert set(fields) == {"jpg", "flac", "json"}


def test_a_template_forms_the_text_and_drops_lines_whose_fields_are_empty():
    columns = ColumnMap(
        text=("instruction", "input", "output"), template="Q: {instruction}\n{input}\nA: {output}"
    )
    enc = RowEncoder(columns, "platypus")
    row = {"instruction": "add", "input": "", "output": "2"}
    assert enc(row, "k")["txt"] == b"Q: add\nA: 2"
    assert json.loads(enc(row, "k")["json"]) == {"source": "platypus"}
    with pytest.raises(ColumnError, match="'output' is not in the row"):
        enc({"instruction": "add", "input": None}, "k")


def test_an_image_given_by_path_is_read_from_it(tmp_path):
    jpg = _image("JPEG")
    (tmp_path / "a.jpg").write_bytes(jpg)
    enc = RowEncoder(ColumnMap(image="i"), "s", paths=ReadRoots.of([str(tmp_path)]))
    assert enc({"i": str(tmp_path / "a.jpg")}, "k")["jpg"] == jpg
    assert enc({"i": {"bytes": None, "path": str(tmp_path / "a.jpg")}}, "k")["jpg"] == jpg
    with pytest.raises(SkipSample, match="image_unreadable") as e:
        enc({"i": str(tmp_path / "missing.jpg")}, "k7")
    assert e.value.reason == "image_unreadable" and e.value.key == "k7"
    with pytest.raises(SkipSample, match="image_empty"):
        enc({"i": {"bytes": b"", "path": None}}, "k")


def test_a_missing_image_or_clip_leaves_its_member_out():
    enc = RowEncoder(ColumnMap(image="i", audio="a", text=("t",)), "s")
    assert set(enc({"i": None, "a": None, "t": "x"}, "k")) == {"txt", "json"}


def test_verify_false_passes_a_cut_image_through_and_true_skips_it():
    """The reader's streaming (``verify=False``) leaves checks to the decoder; conversion
    skips the row."""
    cut = _image("JPEG")[:200]
    row = {"i": {"bytes": cut, "path": None}}
    assert RowEncoder(ColumnMap(image="i"), "s", verify=False)(row, "k")["jpg"] == cut
    with pytest.raises(SkipSample, match="bad_image"):
        RowEncoder(ColumnMap(image="i"), "s")(row, "k")


def test_decoded_audio_arrays_are_encoded_once_as_flac():
    import soundfile as sf

    enc = RowEncoder(ColumnMap(audio="a"), "s")
    mono = {"array": np.linspace(-0.5, 0.5, 1600), "sampling_rate": 16000}
    data = enc({"a": mono}, "k")["flac"]
    info = sf.info(io.BytesIO(data))
    assert (info.samplerate, info.frames, info.channels) == (16000, 1600, 1)
    stereo = {"array": np.zeros((2, 800)), "sampling_rate": 8000}  # (channels, samples)
    info = sf.info(io.BytesIO(enc({"a": stereo}, "k")["flac"]))
    assert (info.samplerate, info.frames, info.channels) == (8000, 800, 2)


def test_encoded_bytes_of_each_cell_layout():
    assert encoded_bytes(b"abc", "k", "binary") == (b"abc", None)
    assert encoded_bytes({"bytes": b"abc", "path": "x.bin"}, "k", "binary") == (b"abc", "x.bin")
    with pytest.raises(SkipSample, match="audio_empty"):
        encoded_bytes({"bytes": None, "path": None}, "k", "audio")


def test_modes_png_cannot_hold_are_written_as_tiff():
    from PIL import Image

    ext, data = encode_pil_image(Image.new("F", (3, 2), 1.5))
    assert ext == "tiff" and Image.open(io.BytesIO(data)).getpixel((0, 0)) == 1.5


def test_decoded_pil_images_are_encoded_once():
    from PIL import Image

    enc = RowEncoder(ColumnMap(image="image", text=("text",)), "gen")
    rgb = Image.new("RGB", (10, 6), (200, 10, 10))
    fields = enc({"image": rgb, "text": "hi"}, "k")
    assert set(fields) == {"jpg", "txt", "json"}
    assert Image.open(io.BytesIO(fields["jpg"])).size == (10, 6)
    rgba = Image.new("RGBA", (4, 4), (1, 2, 3, 4))
    ext, data = encode_pil_image(rgba)
    assert ext == "png" and Image.open(io.BytesIO(data)).getpixel((0, 0)) == (1, 2, 3, 4)
    ext, _ = encode_pil_image(Image.new("L", (4, 4)))
    assert ext == "png"


def test_row_encoder_audio_extension_and_bad_bytes():
    enc = RowEncoder(ColumnMap(audio="a"), "src")
    wav = encode_audio(random.Random(0), 0.1, fmt="WAV")
    assert "wav" in enc({"a": {"bytes": wav, "path": "x.wav"}}, "k")
    with pytest.raises(SkipSample, match="bad_audio"):
        enc({"a": {"bytes": b"RIFF\x00\x00\x00\x00WAVEjunk", "path": None}}, "k")
    with pytest.raises(SkipSample, match="audio_empty"):
        enc({"a": {"bytes": b"", "path": None}}, "k")
    # non-JSON values in other columns are made JSON-safe
    enc2 = RowEncoder(ColumnMap(extra=("d", "b", "f")), "src")
    fields = enc2({"d": datetime.date(2024, 1, 2), "b": b"\x00", "f": float("nan")}, "k")
    meta = json.loads(fields["json"])
    assert meta == {"source": "src", "d": "2024-01-02", "f": None}
    assert fields["b.bin"] == b"\x00"  # binary data is never dropped: a member of its own
    with pytest.raises(ColumnError, match=r"'n'.*--drop-column n"):
        enc2 = RowEncoder(ColumnMap(extra=("n",)), "src")({"n": {"x": [b"\x01"]}}, "k")


def test_members_of_two_columns_never_overwrite_each_other():
    """Issue 22, items 2 and 4: a source without features whose extra columns turn out to
    hold bytes gives them members of their own at run time; two that meet stop the job (one
    would overwrite the other). A column named source never replaces the dataset's name."""
    with pytest.raises(ColumnError, match="'a.b' and 'a b'"):
        RowEncoder(ColumnMap(binary=("a.b", "a b")), "s")
    enc = RowEncoder(ColumnMap(text=("t",), extra=("a.b", "source"), binary=("a b",)), "s")
    with pytest.raises(ColumnError, match="'a.b' and 'a b'"):
        enc({"t": "x", "a.b": b"1", "a b": b"2", "source": "web"}, "k")
    fields = enc({"t": "x", "a.b": 3, "a b": b"2", "source": "web"}, "k")
    assert json.loads(fields["json"]) == {"a.b": 3, "source": "s", "source_column": "web"}
    assert fields["a_b.bin"] == b"2"


def test_paths_are_read_only_inside_the_roots_and_the_first_outside_is_logged(tmp_path, caplog):
    """Issue 22, item 3 (the converter's end-to-end test is tests/write/test_hostile_rows.py)."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.bin").write_bytes(b"in")
    (tmp_path / "secret").write_bytes(b"out")
    enc = RowEncoder(ColumnMap(binary=("b",)), "s", paths=ReadRoots.of([str(tmp_path / "src")]))
    assert enc({"b": {"bytes": None, "path": str(tmp_path / "src" / "a.bin")}}, "k")["b.bin"]
    for _ in range(2):
        with pytest.raises(SkipSample, match="path_outside_source"):
            enc({"b": {"bytes": None, "path": str(tmp_path / "secret")}}, "k")
    warned = [r for r in caplog.records if "outside the source" in r.getMessage()]
    assert len(warned) == 1 and "'b'" in warned[0].getMessage()
    with pytest.raises(SkipSample, match="path_outside_source"):  # no roots: nothing is read
        encoded_bytes({"bytes": None, "path": str(tmp_path / "src" / "a.bin")}, "k", "binary")


def test_unverified_audio_is_named_by_an_audio_suffix_only(tmp_path):
    """With verify=False (the Hub stream of compat.py) an unknown clip took its member name
    from its path's suffix: ``clip.json`` would have replaced the sample's .json."""
    (tmp_path / "clip.json").write_bytes(b"not a known signature")
    enc = RowEncoder(ColumnMap(audio="a"), "s", verify=False, paths=ReadRoots.of([str(tmp_path)]))
    with pytest.raises(SkipSample, match="unknown_audio_format"):
        enc({"a": {"bytes": None, "path": str(tmp_path / "clip.json")}}, "k")
    assert "opus" in enc({"a": {"bytes": b"no signature", "path": "x.opus"}}, "k")
