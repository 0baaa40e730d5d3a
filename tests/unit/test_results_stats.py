"""The results statistics: every figure against scipy/statsmodels on fixed counts, and the method
itself by simulation (A/A false positives, coverage of a planted uplift, daily looks)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from c2b.results import stats as S
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint, proportions_ztest
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

COUNTS = [(80, 400, 57, 400), (573, 2604, 208, 1296), (3, 50, 1, 60), (1200, 10_000, 1100, 10_050)]


def _binomial_band(rate: float, reps: int, level: float = 0.99) -> tuple[float, float]:
    """The interval a share of ``reps`` runs with true rate ``rate`` falls in with probability ``level``."""
    lo, hi = sps.binom.interval(level, reps, rate)
    return lo / reps, hi / reps


@pytest.mark.parametrize("x1,n1,x0,n0", COUNTS)
def test_rate_figures_equal_statsmodels(x1: int, n1: int, x0: int, n0: int) -> None:
    for x, n in ((x1, n1), (x0, n0)):
        assert S.wilson_interval(x, n) == pytest.approx(proportion_confint(x, n, method="wilson"), rel=1e-12)
    z, p = S.two_proportion_ztest(x1, n1, x0, n0)
    assert (z, p) == pytest.approx(proportions_ztest([x1, x0], [n1, n0]), rel=1e-10)
    assert S.diff_interval(x1, n1, x0, n0) == pytest.approx(
        confint_proportions_2indep(x1, n1, x0, n0, method="wald", compare="diff"), rel=1e-10)
    rel, lo, hi = S.ratio_interval(x1, n1, x0, n0)
    ratio_lo, ratio_hi = confint_proportions_2indep(x1, n1, x0, n0, method="log", compare="ratio")
    assert rel == pytest.approx((x1 / n1) / (x0 / n0) - 1)
    assert (lo, hi) == pytest.approx((ratio_lo - 1, ratio_hi - 1), rel=1e-10)


def test_holm_and_srm_equal_statsmodels_and_scipy() -> None:
    p = [0.01, 0.04, 0.03, 0.2, 0.0001]
    assert S.holm(p) == pytest.approx(list(multipletests(p, method="holm")[1]), rel=1e-12)
    observed = {"coupon": 5050, "red_packet": 2400, "control": 2550}
    p_value, shares = S.srm_test(observed, {"coupon": 40, "red_packet": 20, "control": 20})
    assert shares == {"coupon": 0.5, "red_packet": 0.25, "control": 0.25}
    assert p_value == pytest.approx(sps.chisquare([5050, 2400, 2550], [5000, 2500, 2500]).pvalue, rel=1e-12)
    # A broken split is flagged; a zero-weight variant is not part of the test.
    p_bad, _ = S.srm_test({"a": 5300, "b": 4700, "paused": 0}, {"a": 1, "b": 1, "paused": 0})
    assert p_bad == pytest.approx(sps.chisquare([5300, 4700]).pvalue) and p_bad < S.SRM_ALPHA
    assert S.srm_test({"all": 10}, {"all": 1})[0] is None


def test_value_metric_equals_scipy_welch_and_statsmodels_interval() -> None:
    rng = np.random.default_rng(7)
    treated = np.where(rng.random(900) < 0.2, rng.gamma(2.0, 900.0, 900), 0.0)
    control = np.where(rng.random(700) < 0.15, rng.gamma(2.0, 800.0, 700), 0.0)
    a = S.Moments(len(treated), treated.sum(), (treated ** 2).sum())
    c = S.Moments(len(control), control.sum(), (control ** 2).sum())
    assert a.var == pytest.approx(treated.var(ddof=1), rel=1e-9)
    w = S.welch_test(a.mean, a.var, a.n, c.mean, c.var, c.n)
    ref = sps.ttest_ind(treated, control, equal_var=False)
    assert (w["t"], w["p"]) == pytest.approx((ref.statistic, ref.pvalue), rel=1e-9)
    cm = CompareMeans(DescrStatsW(treated), DescrStatsW(control))
    assert (w["lo"], w["hi"]) == pytest.approx(cm.tconfint_diff(usevar="unequal"), rel=1e-9)
    # The per-variant interval of a value metric is the one-sample t interval.
    arm = S.Arm("t", len(treated), int((treated > 0).sum()), treated.sum(), (treated ** 2).sum())
    mean, ci = S.arm_rate(arm, "value")
    assert mean == pytest.approx(treated.mean())
    assert ci == pytest.approx(list(DescrStatsW(treated).tconfint_mean()), rel=1e-9)


def test_uplifts_holm_adjusts_against_the_one_control() -> None:
    arms = [S.Arm("coupon", 2604, 573), S.Arm("red_packet", 2581, 491), S.Arm("control", 1296, 208, is_control=True)]
    out = S.uplifts(arms, "rate", "fixed")
    raw = [proportions_ztest([x, 208], [n, 1296])[1] for x, n in ((573, 2604), (491, 2581))]
    assert [u.p_value for u in out] == pytest.approx(raw, rel=1e-10)
    assert [u.p_adjusted for u in out] == pytest.approx(list(multipletests(raw, method="holm")[1]), rel=1e-10)
    assert [u.significant for u in out] == [p < 0.05 for p in multipletests(raw, method="holm")[1]]
    assert S.uplifts([S.Arm("a", 10, 1), S.Arm("b", 10, 2)], "rate", "fixed") == []  # no control: no uplift


def test_sequential_interval_is_the_msprt_inversion() -> None:
    """The interval is exactly the set of differences the mixture likelihood ratio does not reject."""
    d, v, tau2 = 0.03, 0.0001, 0.0008
    s = S.sequential_test(d, v, tau2)

    def lr(delta: float) -> float:  # the mSPRT statistic of the hypothesis "difference = delta"
        return math.sqrt(v / (v + tau2)) * math.exp(tau2 * (d - delta) ** 2 / (2 * v * (v + tau2)))

    assert lr(float(s["lo"])) == pytest.approx(1 / 0.05, rel=1e-9)
    assert lr(float(s["hi"])) == pytest.approx(1 / 0.05, rel=1e-9)
    assert float(s["p"]) == pytest.approx(min(1.0, 1 / lr(0.0)), rel=1e-12)
    fixed_half = 1.959964 * math.sqrt(v)
    assert float(s["hi"]) - d > fixed_half  # always-valid costs width


# --- the method, by simulation (vectorised: each runs in milliseconds) -----------------------------

REPS = 2000


def _daily_cumulative(rng: np.random.Generator, reps: int, users: int, hazard: float, days: int) -> np.ndarray:
    """Cumulative converted users per day (reps x days) when each user converts on a day with ``hazard``."""
    left = np.full(reps, users)
    total = np.zeros(reps, dtype=np.int64)
    out = np.zeros((reps, days), dtype=np.int64)
    for day in range(days):
        new = rng.binomial(left, hazard)
        total += new
        left -= new
        out[:, day] = total
    return out


def test_aa_fixed_test_flags_five_percent() -> None:
    rng = np.random.default_rng(2026)
    n1, n0 = 4000, 1000
    a, b = rng.binomial(n1, 0.12, REPS), rng.binomial(n0, 0.12, REPS)
    share = float((S.two_proportion_ztest(a, n1, b, n0)[1] < 0.05).mean())
    lo, hi = _binomial_band(0.05, REPS)
    assert lo <= share <= hi, share


def test_aa_daily_looks_fixed_test_inflates_sequential_stays_in_band() -> None:
    """Looking every day of a 7-day window: the fixed test flags far more than 5%, the sequential one
    does not (its guarantee is 'at most alpha at any number of looks')."""
    rng = np.random.default_rng(11)
    users, days = 3000, 7
    a = _daily_cumulative(rng, REPS, users, 0.02, days)
    b = _daily_cumulative(rng, REPS, users, 0.02, days)
    fixed_any = np.zeros(REPS, dtype=bool)
    sequential_any = np.zeros(REPS, dtype=bool)
    tau2 = S.mixture_variance(users, users)
    for day in range(days):
        fixed_any |= S.two_proportion_ztest(a[:, day], users, b[:, day], users)[1] < 0.05
        d, v = S.proportion_diff(a[:, day], users, b[:, day], users)
        sequential_any |= S.sequential_test(d, v, tau2)["p"] < 0.05
    lo, hi = _binomial_band(0.05, REPS)
    assert fixed_any.mean() > hi, fixed_any.mean()  # the problem the sequential method solves
    assert sequential_any.mean() <= hi, sequential_any.mean()


@pytest.mark.parametrize("method", ["fixed", "sequential"])
def test_planted_uplift_is_inside_its_interval_at_the_nominal_rate(method: str) -> None:
    rng = np.random.default_rng(5)
    n1, n0, p1, p0 = 3000, 1500, 0.19, 0.15
    x1, x0 = rng.binomial(n1, p1, REPS), rng.binomial(n0, p0, REPS)
    if method == "fixed":
        lo, hi = S.diff_interval(x1, n1, x0, n0)
        _, rlo, rhi = S.ratio_interval(x1, n1, x0, n0)
        rel_cover = float(((rlo <= p1 / p0 - 1) & (p1 / p0 - 1 <= rhi)).mean())
        band = _binomial_band(0.95, REPS)
        assert band[0] <= rel_cover <= band[1], rel_cover
    else:
        d, v = S.proportion_diff(x1, n1, x0, n0)
        s = S.sequential_test(d, v, S.mixture_variance(n1, n0))
        lo, hi = s["lo"], s["hi"]
    cover = float(((lo <= p1 - p0) & (p1 - p0 <= hi)).mean())
    band = _binomial_band(0.95, REPS)
    if method == "fixed":
        assert band[0] <= cover <= band[1], cover
    else:
        assert cover >= band[0], cover  # always-valid: at least the nominal coverage
    # The planted uplift is found: most runs call it significant.
    assert float((lo > 0).mean()) > 0.5
