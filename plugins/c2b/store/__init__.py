"""The shard store: run-scoped Redis keys holding an audience sliced by murmur3 shard index."""
