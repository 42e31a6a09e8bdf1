"""The shard contract both wings share: sample layout (``schema``), tar I/O (``tario``), the one
loop that streams a shard's samples (``stream``), the manifest and what it may claim
(``checks``), the per-shard index, a shard's scan for its index (``scan``), shard verification
and seeded synthetic shards. No jobs: no
threads, no progress bars, no state between calls."""
