"""Group-sequential boundaries for a known number of daily looks: alpha spent over the window.

Why this and not an open-ended always-valid test: the attribution window is known at the send
(the plan's ``goal.window_days``) and attribution runs once a day, so the page is read at most at
``K = window_days`` looks. A boundary designed for exactly those looks spends the whole 5% over
them (an open-ended mixture SPRT, valid for infinitely many looks, spends only ~1% over 7).

- **Spending** (Lan & DeMets 1983): the cumulative type I error allowed by look ``k`` is
  ``alpha(t_k)`` with ``t_k = k / K`` (calendar information fraction: one look per day of the
  window). The default is the O'Brien-Fleming-type function ``2 - 2 Phi(z_{alpha/2} / sqrt(t))``:
  strict on the first days (few conversions, novelty effects) and close to the fixed test at the
  end, so the final interval is barely wider than the classic one. Pocock-type
  ``alpha ln(1 + (e - 1) t)`` is available too.
- **Boundaries** are exact for the canonical joint distribution of the cumulative z-statistics
  (``corr(Z_j, Z_k) = sqrt(t_j / t_k)``), by the recursive numerical integration of Armitage,
  McPherson and Rowe (1969): the sub-density of the score ``S_k = Z_k sqrt(t_k)`` on the
  continuation region is carried from look to look on a Simpson grid, and each boundary is the root
  of "probability of first crossing at look k = alpha spent at look k".
- **Repeated confidence interval** at look ``k``: ``diff +- c_k se``; covers the true difference at
  every look simultaneously with probability 1 - alpha. The repeated p-value is the smallest
  alpha whose look-``k`` boundary the z-statistic reaches.

Boundaries depend only on (K, alpha, spending), so they are cached.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import optimize, special

SPENDING = ("obrien-fleming", "pocock")
DEFAULT_SPENDING = "obrien-fleming"
SPENDING_NAMES = {"obrien-fleming": "O'Brien-Fleming", "pocock": "Pocock"}
_GRID = 401  # Simpson points per look (odd); boundaries agree with published tables to < 0.001
_SD_SPAN = 9.0  # the score's sub-density beyond 9 sd is < 1e-18: the grid stops there
_TINY = 1e-13  # below this much alpha at a look, the boundary is the nominal one (conditioning is moot)


def spent(t: Any, alpha: float, spending: str = DEFAULT_SPENDING) -> Any:
    """Return the cumulative two-sided alpha spent by information fraction ``t`` (0 < t <= 1)."""
    t = np.asarray(t, float)
    if spending == "obrien-fleming":
        return 2 - 2 * special.ndtr(special.ndtri(1 - alpha / 2) / np.sqrt(t))
    if spending == "pocock":
        return alpha * np.log(1 + (math.e - 1) * t)
    raise ValueError(f"spending {spending!r}: use one of {', '.join(SPENDING)}")


def _simpson(lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    grid = np.linspace(lo, hi, _GRID)
    w = np.ones(_GRID)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return grid, w * (hi - lo) / (3 * (_GRID - 1))


def _boundaries(fractions: tuple[float, ...], target: tuple[float, ...]) -> np.ndarray:
    """Return z-boundaries c_k such that the first crossing of |Z| >= c at look k has probability target[k].

    ``fractions`` are the information fractions t_1 < ... < t_K; ``target`` the alpha to spend at
    each look (its increments, not cumulative).
    """
    c = np.empty(len(fractions))
    grid = mass = np.empty(0)
    prev_t = 0.0
    for k, (t, a) in enumerate(zip(fractions, target, strict=True)):
        sd = math.sqrt(t - prev_t)
        if k == 0 or a < _TINY:
            # At look 1 the crossing probability is 2 Phi(-c); a negligible spend is the same to 1e-13.
            c[k] = -special.ndtri(max(a, 1e-300) / 2)
        else:
            def excess(b: float, grid: np.ndarray = grid, mass: np.ndarray = mass, sd: float = sd,
                       a: float = a) -> float:
                return float(mass @ (special.ndtr((grid - b) / sd) + special.ndtr((-b - grid) / sd))) - a

            b = optimize.brentq(excess, 0.0, 40.0 * math.sqrt(t), xtol=1e-12)
            c[k] = b / math.sqrt(t)
        # Sub-density of S_k on the continuation region |S_k| < c_k sqrt(t_k), as Simpson masses.
        half = min(c[k] * math.sqrt(t), _SD_SPAN * math.sqrt(t))
        new_grid, w = _simpson(-half, half)
        if k == 0:
            density = np.exp(-new_grid**2 / (2 * t)) / math.sqrt(2 * math.pi * t)
        else:
            kernel = np.exp(-((new_grid[:, None] - grid[None, :]) ** 2) / (2 * sd * sd)) / (sd * math.sqrt(2 * math.pi))
            density = kernel @ mass
        grid, mass, prev_t = new_grid, density * w, t
    return c


@lru_cache(maxsize=256)
def spending_boundaries(looks: int, alpha: float = 0.05, spending: str = DEFAULT_SPENDING) -> tuple[float, ...]:
    """Return the z-boundaries of ``looks`` equally spaced looks (t_k = k / looks), two-sided ``alpha``."""
    if looks < 1:
        raise ValueError(f"looks must be >= 1, got {looks}")
    fractions = tuple((k + 1) / looks for k in range(looks))
    cumulative = np.minimum(alpha, spent(np.array(fractions), alpha, spending))
    cumulative[-1] = alpha  # spend exactly alpha at the end (no floating-point left over)
    steps = np.diff(np.concatenate([[0.0], cumulative]))
    return tuple(float(x) for x in _boundaries(fractions, tuple(float(s) for s in steps)))


@lru_cache(maxsize=64)
def shaped_boundaries(looks: int, alpha: float = 0.05, shape: str = "pocock") -> tuple[float, ...]:
    """Return the classic boundaries of a fixed shape: Pocock (constant c) or O'Brien-Fleming (c sqrt(K/k)).

    The constant is solved so the total two-sided type I error over ``looks`` equally spaced looks is
    ``alpha``; used to check the integration against the published tables.
    """
    fractions = np.arange(1, looks + 1) / looks
    shape_of = {"pocock": np.ones(looks), "obrien-fleming": 1 / np.sqrt(fractions)}[shape]

    def total(const: float) -> float:
        return _crossing_probability(tuple(fractions), tuple(const * shape_of)) - alpha

    const = optimize.brentq(total, 0.5, 10.0, xtol=1e-10)
    return tuple(float(x) for x in const * shape_of)


def _crossing_probability(fractions: tuple[float, ...], bounds: tuple[float, ...]) -> float:
    """Return P(|Z_k| >= bounds[k] for some k) under the null, by the same recursion."""
    total = 0.0
    grid = mass = np.empty(0)
    prev_t = 0.0
    for k, (t, c) in enumerate(zip(fractions, bounds, strict=True)):
        sd, b = math.sqrt(t - prev_t), c * math.sqrt(t)
        if k == 0:
            total += 2 * float(special.ndtr(-c))
        else:
            total += float(mass @ (special.ndtr((grid - b) / sd) + special.ndtr((-b - grid) / sd)))
        half = min(b, _SD_SPAN * math.sqrt(t))
        new_grid, w = _simpson(-half, half)
        if k == 0:
            density = np.exp(-new_grid**2 / (2 * t)) / math.sqrt(2 * math.pi * t)
        else:
            kernel = np.exp(-((new_grid[:, None] - grid[None, :]) ** 2) / (2 * sd * sd)) / (sd * math.sqrt(2 * math.pi))
            density = kernel @ mass
        grid, mass, prev_t = new_grid, density * w, t
    return total


def boundary(look: int, looks: int, alpha: float = 0.05, spending: str = DEFAULT_SPENDING) -> float:
    """Return the z-boundary of look ``look`` (1-based, capped at ``looks``) of a ``looks``-look design."""
    look = min(max(int(look), 1), looks)
    return spending_boundaries(looks, alpha, spending)[look - 1]


def repeated_p_value(z: float, look: int, looks: int, spending: str = DEFAULT_SPENDING) -> float:
    """Return the smallest alpha at which ``|z|`` reaches look ``look``'s boundary (floored at 1e-15).

    Valid at every look like the interval: the chance that it ever drops below alpha in an A/A test
    is at most alpha.
    """
    z = abs(float(z))
    if not math.isfinite(z):
        return math.nan
    lo, hi = 1e-15, 1 - 1e-9
    if z >= boundary(look, looks, lo, spending):
        return lo
    if z <= boundary(look, looks, hi, spending):
        return 1.0

    def gap(log_alpha: float) -> float:
        return boundary(look, looks, math.exp(log_alpha), spending) - z

    return math.exp(optimize.brentq(gap, math.log(lo), math.log(hi), xtol=1e-6))


def describe(looks: int, spending: str = DEFAULT_SPENDING) -> str:
    """Return the one-line name of the design the page shows."""
    return (f"group-sequential, {SPENDING_NAMES[spending]}-type alpha spending over {looks} daily "
            f"look{'s' if looks != 1 else ''}")
