"""The driver's concurrent record reads work with every s3fs the package allows (>= 2024.6).

s3fs 2026.3 added ``max_concurrency`` to ``_cat_file`` (a HEAD, then split GETs unless it is
1); earlier releases make one GET and refuse the argument. Found by the peers' venv (s3fs
2026.2.0), where every resume's record read failed with a TypeError.
"""

from __future__ import annotations

from wdstream.storage import _cat_file_splits


class _OldS3:  # s3fs 2026.2.0's signature
    async def _cat_file(self, path, version_id=None, start=None, end=None):
        return b""


class _NewS3:  # s3fs 2026.9.0's signature
    async def _cat_file(
        self, path, version_id=None, start=None, end=None, max_concurrency=None, **kwargs
    ):
        return b""


def test_max_concurrency_is_passed_only_to_an_s3fs_that_takes_it():
    assert _cat_file_splits(_OldS3()) is False
    assert _cat_file_splits(_NewS3()) is True


def test_the_installed_s3fs_is_recognised():
    import inspect

    import s3fs

    takes = "max_concurrency" in inspect.signature(s3fs.S3FileSystem._cat_file).parameters
    assert _cat_file_splits(s3fs.S3FileSystem(anon=True, skip_instance_cache=True)) is takes
