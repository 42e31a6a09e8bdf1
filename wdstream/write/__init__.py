"""The write wing: source (HF / synthetic) -> encode (row -> members) -> writer (commit-or-abort
shards) -> partition -> convert (driver, manifest), on an executor (local pool or Ray); and
``indexer``, the job that indexes shards wdstream did not write (``wdstream index``)."""
