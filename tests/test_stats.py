"""clutils.stats: intervals checked against closed forms and against scipy's own tests (an endpoint of a
95 % interval is exactly where the matching two-sided test has p = 0.05)."""
import math

import numpy as np
import pytest
from scipy import stats as st

from clutils import stats


def test_interval_of_one_to_five_is_the_textbook_number():
    r = stats.interval([1, 2, 3, 4, 5])
    half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)  # t_{0.975,4} · sd / √n
    assert r.mean == 3 and r.n == 5
    assert r.low == pytest.approx(3 - half, abs=1e-12) and r.high == pytest.approx(3 + half, abs=1e-12)


def test_paired_endpoints_are_where_the_paired_t_test_reaches_p_005():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 1.0, 7), rng.normal(0.0, 1.0, 7)
    r = stats.paired(a, b)
    assert st.ttest_rel(a - r.low, b).pvalue == pytest.approx(0.05, abs=1e-9)
    assert st.ttest_rel(a - r.high, b).pvalue == pytest.approx(0.05, abs=1e-9)
    assert r.n_pos == int((a > b).sum()) and r.n_pos + r.n_neg == 7
    assert r.p_value == pytest.approx(st.ttest_rel(a, b).pvalue, rel=1e-10)
    assert r.sd == pytest.approx(np.std(a - b, ddof=1))


def test_paired_pairs_mappings_by_seed_and_skips_missing():
    a = {0: 1.0, 1: 2.0, 2: None, 3: 5.0}
    b = {3: 1.0, 0: 0.5, 1: 3.0, 2: 9.0}
    r = stats.paired(a, b)
    assert r.n == 3 and r.mean == pytest.approx((0.5 - 1.0 + 4.0) / 3)
    assert (r.n_pos, r.n_neg) == (2, 1)


def test_welch_endpoints_are_where_welchs_test_reaches_p_005():
    a, b = np.array([1.0, 2.0, 3.0, 2.5]), np.array([4.0, 6.0, 8.0])
    r = stats.welch(a, b)
    assert r.mean == pytest.approx(a.mean() - b.mean())
    for end in (r.low, r.high):
        assert st.ttest_ind(a - end, b, equal_var=False).pvalue == pytest.approx(0.05, abs=1e-9)


def test_welch_from_summary_against_a_paper_with_no_spread_is_the_one_sample_interval():
    ours = [90.0, 91.0, 92.0, 91.5, 90.5]
    r = stats.welch_from_summary(np.mean(ours), np.std(ours, ddof=1), 5, 89.0, float("nan"), 1)
    one = stats.interval(np.array(ours) - 89.0)
    assert (r.low, r.high) == pytest.approx((one.low, one.high), abs=1e-12)
    assert math.isnan(stats.welch_from_summary(1.0, float("nan"), 1, 0.0, float("nan"), 1).low)
    # five runs that all gave 0 against a paper's one number: the spread measured is zero, the difference exact
    exact = stats.welch_from_summary(0.0, 0.0, 5, 32.95, float("nan"), 1)
    assert (exact.low, exact.mean, exact.high) == (-32.95, -32.95, -32.95)


def test_verdict_and_format_follow_the_interval():
    up = stats.paired([2.0, 3.0, 2.5, 2.2, 2.9], [1.0, 1.0, 1.0, 1.0, 1.0])
    assert up.verdict == "higher" and up.format(1).endswith("5/5 seeds > 0")
    down = stats.paired([0.0, 0.0, 0.0], [1.0, 2.0, 1.5])
    assert down.verdict == "lower" and "3/3 seeds < 0" in str(down)
    mixed = stats.paired([1.0, -1.0, 0.5, -0.4], [0.0, 0.0, 0.0, 0.0])
    assert mixed.verdict == "indistinguishable"
    assert stats.interval([4.0]).format().startswith("+4.00 (n=1")
    assert stats.pm([1.0, 2.0, 3.0]) == "2.0 ± 1.0" and stats.pm([7.0]) == "7.0"
    assert stats.pm([1.0, 2.0, 3.0], 2, show_n=True) == "2.00 ± 1.00 (n=3)"
    assert math.isnan(stats.paired([1.0, 2.0], [0.0, 1.0]).p_value)  # no spread, no test


@pytest.mark.parametrize("call, fragment", [
    (lambda: stats.paired([1, 2], [1, 2, 3]), "pair them seed by seed"),
    (lambda: stats.paired({0: 1.0}, [1.0]), "two mappings"),
    (lambda: stats.paired({0: 1.0}, {1: 1.0}), "no seed holds a value in both"),
    (lambda: stats.interval([1.0, float("nan")]), "drop the failed seed"),
    (lambda: stats.interval([]), "non-empty"),
    (lambda: stats.interval([1.0, 2.0], level=95), "between 0 and 1"),
])
def test_bad_input_says_what_to_do(call, fragment):
    with pytest.raises((ValueError, TypeError), match=fragment):
        call()
