"""This process's memory, for the task logs: a step's peak is what a worker must have room for.

Read from ``/proc/self/status`` (Linux): ``VmRSS`` now, ``VmHWM`` the peak since the process
started. A task process of Airflow 3 runs one task, so its peak is that task's (plus what the
worker's warm imports put in it before the fork).
"""

from __future__ import annotations


def memory_mib() -> tuple[int, int]:
    """Return (resident now, resident at peak) in MiB; (0, 0) where /proc cannot tell."""
    try:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f if line.startswith(("VmRSS", "VmHWM")))
        return int(fields["VmRSS"].split()[0]) // 1024, int(fields["VmHWM"].split()[0]) // 1024
    except (OSError, KeyError, ValueError):
        return 0, 0


def phase_peak(what: str) -> None:
    """Log the peak since the last call, then reset it (``C2B_MEMORY_PHASES=1``; Linux).

    For finding which part of a task needs the memory: writing ``5`` to ``/proc/self/clear_refs``
    resets ``VmHWM`` to the current resident size.
    """
    import logging
    import os

    if not os.environ.get("C2B_MEMORY_PHASES"):
        return
    now, peak = memory_mib()
    logging.getLogger(__name__).info("memory phase %s: now %s MiB, peak %s MiB", what, now, peak)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
