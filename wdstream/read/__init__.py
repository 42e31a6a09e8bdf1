"""The read wing: manifest or URLs -> world (rank, worker) -> plan (split + shuffle) -> shards ->
stages (read-ahead, shuffle, decode, batches) -> collate -> loader."""
