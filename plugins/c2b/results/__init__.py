"""Results: what a run did (per-shard stats reduced to a report)."""
