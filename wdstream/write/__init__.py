"""The write wing: source (Hugging Face rows through :mod:`wdstream.rows`, or synthetic) -> plan
-> partition (rows -> members -> writer: commit-or-abort shards) -> convert (driver, manifest),
on an executor (local pool or Ray); and ``indexer``, the job that indexes shards wdstream did
not write (``wdstream index``)."""
