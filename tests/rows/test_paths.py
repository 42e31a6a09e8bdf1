"""rows/paths.py: a media cell's path is read only inside the source's own folders or the
allowed ones (issue 22, item 3): symlinks, ``..`` and ``~`` are resolved first, URLs are
confined the same way, and a path elsewhere raises PathOutsideSource."""

from __future__ import annotations

import os

import pytest

from wdstream.rows.paths import PATH_OUTSIDE_SOURCE, PathOutsideSource, ReadRoots, source_roots
from wdstream.rows.source import HFSource


@pytest.fixture
def tree(tmp_path):
    """``src/`` (the source, with ``img/a.jpg``), ``secret`` beside it, and a symlink
    ``src/img/leak.jpg`` to the secret."""
    (tmp_path / "src" / "img").mkdir(parents=True)
    (tmp_path / "src" / "img" / "a.jpg").write_bytes(b"a")
    (tmp_path / "secret").write_bytes(b"s")
    os.symlink(tmp_path / "secret", tmp_path / "src" / "img" / "leak.jpg")
    return tmp_path


def test_a_path_inside_the_source_folder_is_read_resolved(tree):
    roots = ReadRoots.of([str(tree / "src")])
    inside = str(tree / "src" / "img" / "a.jpg")
    assert roots.resolve(inside) == inside
    assert roots.resolve("file://" + inside) == inside
    assert roots.resolve(str(tree / "src" / "img" / ".." / "img" / "a.jpg")) == inside


def test_paths_outside_every_root_are_refused(tree, monkeypatch):
    roots = ReadRoots.of([str(tree / "src")])
    assert roots.resolve(str(tree / "secret")) is None
    assert roots.resolve(str(tree / "src" / ".." / "secret")) is None  # .. resolved first
    assert roots.resolve(str(tree / "src" / "img" / "leak.jpg")) is None  # symlink resolved
    assert roots.resolve(str(tree / "src2" / "x.jpg")) is None  # a sibling with the prefix
    assert roots.resolve("~/.aws/credentials") is None
    assert roots.resolve("/etc/passwd") is None
    monkeypatch.chdir(tree)
    assert roots.resolve("secret") is None  # relative: from the working folder
    assert roots.resolve("src/img/a.jpg") == str(tree / "src" / "img" / "a.jpg")
    assert ReadRoots().resolve(str(tree / "src" / "img" / "a.jpg")) is None  # no roots


def test_urls_are_read_only_under_a_url_root():
    roots = ReadRoots.of(["s3://bucket/media/", "hf://datasets/owner/name"])
    assert roots.resolve("s3://bucket/media/x.jpg") == "s3://bucket/media/x.jpg"
    assert roots.resolve("s3://bucket/media/../other/x.jpg") is None
    assert roots.resolve("s3://bucket/mediax/x.jpg") is None
    assert roots.resolve("s3://other/x.jpg") is None
    assert roots.resolve("http://169.254.169.254/latest/meta-data/") is None
    assert roots.resolve("https://example.com/a.jpg") is None
    # a Hub dataset's own files, at any revision; zip://member::outer is checked by outer
    assert roots.resolve("hf://datasets/owner/name@main/train/a.jpg") is not None
    assert roots.resolve("zip://a.jpg::hf://datasets/owner/name@abc/x.zip") is not None
    assert roots.resolve("hf://datasets/owner/name2/a.jpg") is None
    assert roots.resolve("zip://a.jpg::s3://other/x.zip") is None


def test_source_roots_are_the_source_folder_its_data_files_and_the_allowed(tree, monkeypatch):
    src = str(tree / "src")
    assert source_roots(HFSource(src)).roots == (src,)
    assert source_roots(HFSource("owner/name")).roots == ("hf://datasets/owner/name",)
    monkeypatch.chdir(tree)
    files = HFSource("parquet", data_files=("src/img/*.parquet", "s3://b/p/**/*.parquet"))
    assert source_roots(files).roots == (str(tree / "src" / "img"), "s3://b/p")
    resolved = source_roots(HFSource("parquet"), files=[str(tree / "src" / "d" / "x.parquet")])
    assert resolved.roots == (str(tree / "src" / "d"),)
    allowed = source_roots(HFSource(src), allow=[str(tree / "src"), "s3://m/"])
    assert allowed.roots == (src, "s3://m")  # duplicates dropped


def test_path_outside_source_is_a_counted_skip():
    exc = PathOutsideSource("/x", key="k")
    assert exc.reason == PATH_OUTSIDE_SOURCE and exc.key == "k" and exc.path == "/x"
