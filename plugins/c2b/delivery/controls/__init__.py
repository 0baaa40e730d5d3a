"""Delivery controls checked on every page: rate limit, frequency cap, quiet hours, kill switch."""
