"""A/B statistics for campaign results: pure functions of counts and sums, no I/O.

What each figure is, and why this method:

- **Rate per variant, Wilson 95% interval.** Wilson keeps its coverage for small counts and rates
  near 0, where the textbook (Wald) interval collapses; campaign conversion rates are often a few
  percent.
- **Uplift against control** (rate metric): absolute ``p1 - p0`` with the unpooled Wald interval,
  relative ``p1 / p0 - 1`` with the log-ratio (Katz) interval, and the pooled two-proportion
  z-test p-value. For a value metric (e.g. sale amount per user): difference of means with
  Welch's t interval and p-value (the arms' variances differ: a coupon changes who buys), relative
  by the delta method on the log of the ratio of means.
- **Holm correction** when several variants face one control: controls the family-wise error
  without Bonferroni's loss of power.
- **Sample-ratio mismatch**: chi-square of assigned users against the plan's weights, flagged at
  p < 0.001 (a broken split makes every other figure meaningless, so the page shows it first).
- **Sequential intervals** (the page's default): results update daily and people look daily; a
  fixed-horizon test looked at every day flags far more than 5% of A/A tests (see the tests). The
  window is known at the send (``goal.window_days``) and attribution runs once a day, so the page
  uses a group-sequential design for exactly those looks: O'Brien-Fleming-type alpha spending over
  the window's daily looks (:mod:`c2b.results.group_sequential`), whose repeated confidence
  interval ``diff +- c_k se`` and repeated p-value hold at every look of the window together, and
  spend the whole 5% over them. The normal-mixture SPRT (mSPRT; Johari et al. 2017, the
  "asymptotic confidence sequence" GrowthBook and Statsig use) is kept below
  (:func:`sequential_test`): valid for any number of looks, never ending, but with a known window
  of 7 daily looks it spends only ~1% of its 5% (measured), so its intervals are wider than needed.

Every function takes numpy arrays as well as scalars (broadcasting), so simulations run
vectorised; the tests compare each figure with scipy/statsmodels on fixed counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import special

from c2b.results import group_sequential

ALPHA = 0.05
SRM_ALPHA = 0.001
# The mixing variance that makes the mSPRT interval tightest at variance V* is about
# V* * (-2 log a + log(1 - 2 log a)) (Howard et al. 2021, as GrowthBook tunes rho).
_TUNE = -2 * math.log(ALPHA) + math.log(1 - 2 * math.log(ALPHA))

ArrayLike = Any  # float | np.ndarray (kept loose: numpy's typing of ufunc results is noisy)


def _z(alpha: float) -> float:
    return float(special.ndtri(1 - alpha / 2))


def normal_sf2(z: ArrayLike) -> ArrayLike:
    """Return the two-sided normal p-value of ``z``."""
    return special.erfc(np.abs(z) / math.sqrt(2))


def wilson_interval(x: ArrayLike, n: ArrayLike, alpha: float = ALPHA) -> tuple[ArrayLike, ArrayLike]:
    """Return the Wilson score interval of ``x`` successes in ``n`` trials."""
    x, n = np.asarray(x, float), np.asarray(n, float)
    z = _z(alpha)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = x / n
        denom = 1 + z * z / n
        centre = (p + z * z / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return centre - half, centre + half


def two_proportion_ztest(x1: ArrayLike, n1: ArrayLike, x0: ArrayLike, n0: ArrayLike) -> tuple[ArrayLike, ArrayLike]:
    """Return ``(z, p)`` of the pooled two-proportion z-test of ``x1/n1`` against ``x0/n0``."""
    x1, n1, x0, n0 = (np.asarray(a, float) for a in (x1, n1, x0, n0))
    with np.errstate(invalid="ignore", divide="ignore"):
        pooled = (x1 + x0) / (n1 + n0)
        se = np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n0))
        z = (x1 / n1 - x0 / n0) / se
    return z, normal_sf2(z)


def proportion_diff(x1: ArrayLike, n1: ArrayLike, x0: ArrayLike, n0: ArrayLike) -> tuple[ArrayLike, ArrayLike]:
    """Return ``(p1 - p0, its unpooled variance)``."""
    x1, n1, x0, n0 = (np.asarray(a, float) for a in (x1, n1, x0, n0))
    with np.errstate(invalid="ignore", divide="ignore"):
        p1, p0 = x1 / n1, x0 / n0
        return p1 - p0, p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0


def diff_interval(x1: ArrayLike, n1: ArrayLike, x0: ArrayLike, n0: ArrayLike,
                  alpha: float = ALPHA) -> tuple[ArrayLike, ArrayLike]:
    """Return the Wald (unpooled) interval of ``p1 - p0``."""
    d, v = proportion_diff(x1, n1, x0, n0)
    half = _z(alpha) * np.sqrt(v)
    return d - half, d + half


def ratio_interval(x1: ArrayLike, n1: ArrayLike, x0: ArrayLike, n0: ArrayLike,
                   alpha: float = ALPHA, crit: ArrayLike = None) -> tuple[ArrayLike, ArrayLike, ArrayLike]:
    """Return ``(p1/p0 - 1, lo, hi)``: relative uplift with the log-ratio (Katz) interval.

    ``crit`` replaces the normal quantile of ``alpha`` (a group-sequential look's boundary).
    """
    x1, n1, x0, n0 = (np.asarray(a, float) for a in (x1, n1, x0, n0))
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = (x1 / n1) / (x0 / n0)
        se = np.sqrt(1 / x1 - 1 / n1 + 1 / x0 - 1 / n0)
        half = (_z(alpha) if crit is None else crit) * se
        return ratio - 1, ratio * np.exp(-half) - 1, ratio * np.exp(half) - 1


@dataclass(frozen=True)
class Moments:
    """What a value metric needs of one arm: users, sum and sum of squares of their values."""

    n: float
    total: float
    squares: float

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else math.nan

    @property
    def var(self) -> float:
        """Sample variance (ddof 1)."""
        if self.n < 2:
            return math.nan
        return max(0.0, (self.squares - self.total * self.total / self.n) / (self.n - 1))


def welch_test(m1: ArrayLike, v1: ArrayLike, n1: ArrayLike, m0: ArrayLike, v0: ArrayLike, n0: ArrayLike,
               alpha: float = ALPHA) -> dict[str, ArrayLike]:
    """Return Welch's t-test of mean ``m1`` against ``m0`` (sample variances ``v``, sizes ``n``).

    Keys: ``diff``, ``lo``, ``hi`` (t interval on Welch-Satterthwaite df), ``t``, ``df``, ``p``.
    """
    m1, v1, n1, m0, v0, n0 = (np.asarray(a, float) for a in (m1, v1, n1, m0, v0, n0))
    with np.errstate(invalid="ignore", divide="ignore"):
        a, b = v1 / n1, v0 / n0
        se = np.sqrt(a + b)
        df = (a + b) ** 2 / (a * a / (n1 - 1) + b * b / (n0 - 1))
        diff = m1 - m0
        t = diff / se
        p = 2 * special.stdtr(df, -np.abs(t))
        half = special.stdtrit(df, 1 - alpha / 2) * se
    return {"diff": diff, "lo": diff - half, "hi": diff + half, "t": t, "df": df, "p": p}


def mean_ratio_interval(m1: ArrayLike, v1: ArrayLike, n1: ArrayLike, m0: ArrayLike, v0: ArrayLike,
                        n0: ArrayLike, alpha: float = ALPHA, crit: ArrayLike = None
                        ) -> tuple[ArrayLike, ArrayLike, ArrayLike]:
    """Return ``(m1/m0 - 1, lo, hi)``: relative difference of means, delta method on the log ratio.

    ``crit`` replaces the normal quantile of ``alpha`` (a group-sequential look's boundary).
    """
    m1, v1, n1, m0, v0, n0 = (np.asarray(a, float) for a in (m1, v1, n1, m0, v0, n0))
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = m1 / m0
        se = np.sqrt(v1 / (n1 * m1 * m1) + v0 / (n0 * m0 * m0))
        half = (_z(alpha) if crit is None else crit) * se
        return ratio - 1, ratio * np.exp(-half) - 1, ratio * np.exp(half) - 1


def holm(p_values: Sequence[float]) -> list[float]:
    """Return Holm step-down adjusted p-values (same order as given; NaN stays NaN)."""
    p = np.asarray(p_values, float)
    out = np.full(len(p), np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    if m == 0:
        return out.tolist()
    order = ok[np.argsort(p[ok], kind="stable")]
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out[order] = adjusted
    return out.tolist()


def srm_test(observed: Mapping[str, int], weights: Mapping[str, float]) -> tuple[float | None, dict[str, float]]:
    """Return ``(p-value, expected shares)`` of the chi-square test of assigned users against weights.

    Variants of weight 0 are left out (they get no users by design); ``None`` when fewer than two
    variants or no users remain.
    """
    total_w = sum(w for w in weights.values() if w > 0)
    shares = {v: (w / total_w if total_w else 0.0) for v, w in weights.items()}
    names = [v for v, w in weights.items() if w > 0]
    n = sum(observed.get(v, 0) for v in names)
    if len(names) < 2 or n == 0:
        return None, shares
    obs = np.array([observed.get(v, 0) for v in names], float)
    exp = np.array([shares[v] * n for v in names])
    chi2 = float(((obs - exp) ** 2 / exp).sum())
    return float(special.chdtrc(len(names) - 1, chi2)), shares


# --- open-ended always-valid (mSPRT): kept for comparison, the page uses group_sequential_test ------

def mixture_variance(n1: ArrayLike, n0: ArrayLike, unit_variance: ArrayLike = 0.25) -> ArrayLike:
    """Return the mSPRT mixing variance tau2 for arms of ``n1`` and ``n0`` users.

    Tuned for the variance of the difference at the end of the window with the largest per-user
    variance (0.25, a rate of 50%, for rate metrics): known at the send, so it does not move
    between looks (a tau2 re-estimated at every look would break the guarantee).
    """
    n1, n0 = np.asarray(n1, float), np.asarray(n0, float)
    return _TUNE * unit_variance * (1 / n1 + 1 / n0)


def sequential_test(diff: ArrayLike, var: ArrayLike, tau2: ArrayLike,
                    alpha: float = ALPHA) -> dict[str, ArrayLike]:
    """Return the mSPRT always-valid interval and p-value of a difference ``diff`` with variance ``var``.

    Keys ``lo``, ``hi`` (the set of differences not rejected at ``alpha``) and ``p`` (``min(1,
    1/likelihood ratio)``, valid at any look).
    """
    d, v, t2 = (np.asarray(a, float) for a in (diff, var, tau2))
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        log_lr = 0.5 * np.log(v / (v + t2)) + t2 * d * d / (2 * v * (v + t2))
        p = np.minimum(1.0, np.exp(-log_lr))
        half = np.sqrt(2 * v * (v + t2) / t2 * (math.log(1 / alpha) + 0.5 * np.log((v + t2) / v)))
    return {"lo": d - half, "hi": d + half, "p": p}


def sequential_ratio_interval(diff_lo: ArrayLike, diff_hi: ArrayLike, base: ArrayLike
                              ) -> tuple[ArrayLike, ArrayLike]:
    """Return a relative interval from an absolute one, dividing by the control's rate or mean.

    An approximation (it ignores the control's own noise); the page's sequential verdict uses
    the absolute interval.
    """
    base = np.asarray(base, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(diff_lo) / base, np.asarray(diff_hi) / base


def group_sequential_test(diff: ArrayLike, var: ArrayLike, look: int, looks: int, alpha: float = ALPHA,
                          spending: str = group_sequential.DEFAULT_SPENDING) -> dict[str, ArrayLike]:
    """Return the repeated confidence interval of ``diff`` (variance ``var``) at daily look ``look`` of ``looks``.

    Keys ``lo``, ``hi`` (``diff +- c_k se``, ``c_k`` the look's boundary), ``z``, ``crit`` (``c_k``)
    and ``reject`` (``|z| >= c_k``; vectorised, for simulations). The repeated p-value, a root
    search per value, is :func:`group_sequential.repeated_p_value`.
    """
    d, v = np.asarray(diff, float), np.asarray(var, float)
    crit = group_sequential.boundary(look, looks, alpha, spending)
    with np.errstate(invalid="ignore", divide="ignore"):
        se = np.sqrt(v)
        z = d / se
    return {"lo": d - crit * se, "hi": d + crit * se, "z": z, "crit": crit, "reject": np.abs(z) >= crit}


# --- one comparison, as the page shows it ----------------------------------------------------------

@dataclass
class Arm:
    """One variant's figures for a metric: users assigned, converted users, and value moments."""

    name: str
    assigned: int
    converted: int
    value_sum: float = 0.0
    value_squares: float = 0.0
    is_control: bool = False


@dataclass
class Uplift:
    variant: str
    control: str
    abs: float | None
    abs_ci: list[float | None]
    rel: float | None
    rel_ci: list[float | None]
    p_value: float | None
    p_adjusted: float | None = None
    significant: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _num(x: Any) -> float | None:
    """Return a finite float, or None (JSON has no NaN)."""
    f = float(x)
    return f if math.isfinite(f) else None


def arm_rate(arm: Arm, kind: str) -> tuple[float | None, list[float | None]]:
    """Return the arm's rate (or mean value per user) and its 95% interval."""
    if arm.assigned <= 0:
        return None, [None, None]
    if kind == "rate":
        lo, hi = wilson_interval(arm.converted, arm.assigned)
        return _num(arm.converted / arm.assigned), [_num(lo), _num(hi)]
    m = Moments(arm.assigned, arm.value_sum, arm.value_squares)
    half = float(special.stdtrit(max(m.n - 1, 1), 1 - ALPHA / 2)) * math.sqrt(m.var / m.n) if m.n > 1 else math.nan
    return _num(m.mean), [_num(m.mean - half), _num(m.mean + half)]


def compare(arm: Arm, control: Arm, kind: str, method: str, look: int = 1, looks: int = 1) -> Uplift:
    """Return one variant's uplift over the control (not yet Holm-adjusted).

    ``method`` "sequential": the repeated confidence interval and p-value of daily look ``look`` of
    a ``looks``-look group-sequential design (the window's days); "fixed": the classic figures.
    """
    if arm.assigned <= 0 or control.assigned <= 0:
        return Uplift(arm.name, control.name, None, [None, None], None, [None, None], None)
    sequential = method == "sequential"
    crit = group_sequential.boundary(look, looks) if sequential else None
    if kind == "rate":
        x1, n1, x0, n0 = arm.converted, arm.assigned, control.converted, control.assigned
        d, v = proportion_diff(x1, n1, x0, n0)
        rel, rlo, rhi = ratio_interval(x1, n1, x0, n0, crit=crit)
        if not sequential:
            lo, hi = diff_interval(x1, n1, x0, n0)
            p = two_proportion_ztest(x1, n1, x0, n0)[1]
    else:
        a = Moments(arm.assigned, arm.value_sum, arm.value_squares)
        c = Moments(control.assigned, control.value_sum, control.value_squares)
        w = welch_test(a.mean, a.var, a.n, c.mean, c.var, c.n)
        d, v = w["diff"], a.var / a.n + c.var / c.n
        rel, rlo, rhi = mean_ratio_interval(a.mean, a.var, a.n, c.mean, c.var, c.n, crit=crit)
        if not sequential:
            lo, hi, p = w["lo"], w["hi"], w["p"]
    if sequential:
        s = group_sequential_test(d, v, look, looks)
        lo, hi = s["lo"], s["hi"]
        p = group_sequential.repeated_p_value(float(s["z"]), look, looks)
    return Uplift(arm.name, control.name, _num(d), [_num(lo), _num(hi)], _num(rel), [_num(rlo), _num(rhi)],
                  _num(p))


def uplifts(arms: Sequence[Arm], kind: str, method: str, alpha: float = ALPHA, look: int | None = None,
            looks: int | None = None) -> list[Uplift]:
    """Return every non-control arm against the control, Holm-adjusted; [] without one control.

    The sequential method needs the look (day of the window, 1-based) and the number of looks (the
    window's days).
    """
    if method == "sequential" and (look is None or looks is None):
        raise ValueError("the sequential method needs look= (day of the window) and looks= (window days)")
    controls = [a for a in arms if a.is_control]
    if len(controls) != 1:
        return []
    control = controls[0]
    out = [compare(a, control, kind, method, look or 1, looks or 1) for a in arms if not a.is_control]
    adjusted = holm([u.p_value if u.p_value is not None else math.nan for u in out])
    for u, p in zip(out, adjusted, strict=True):
        u.p_adjusted = _num(p)
        u.significant = u.p_adjusted is not None and u.p_adjusted < alpha
    return out
