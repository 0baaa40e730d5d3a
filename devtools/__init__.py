"""Tools for the demo, tests and benchmarks: a demo warehouse, a local channel gateway, real servers.

Not part of the engine: nothing under plugins/ imports this package.
"""
