"""Delivery: the per-shard send loop, its ledger, the in-flight window and contact records."""
