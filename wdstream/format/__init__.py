"""The shard contract both wings share: sample layout (``schema``), tar I/O (``tario``), the
manifest, the per-shard index, shard verification and seeded synthetic shards."""
