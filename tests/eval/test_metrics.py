"""The evaluation metrics against scipy computed independently, following docs/cover-behaviour.md section 5."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import optimize, stats

from cover_engine.runtime.eval.metrics import (
    PERCENT_CENTER,
    FitError,
    compute_metrics,
    fit_logistic,
    logistic4,
    rank_unit,
    to_percent,
    zscore,
)


def spec_logistic(x, b1, b2, b3, b4):
    """The spec's formula, written out independently of the module under test."""
    return b2 + (b1 - b2) / (1 + np.exp(-(x - b3) / np.abs(b4)))


def synthetic(n, seed, noise=0.3):
    rng = np.random.default_rng(seed)
    pred = rng.normal(-0.5, 0.8, size=n)
    mos = spec_logistic(pred, 4.6, 1.2, -0.3, 0.4) + rng.normal(0, noise, size=n)
    return pred, mos


@pytest.mark.parametrize("n,seed", [(12, 0), (150, 1), (2000, 2)])
def test_metrics_match_scipy(n, seed):
    pred, mos = synthetic(n, seed)
    m = compute_metrics(pred, mos)
    assert m.n == n and m.fit_error is None
    assert m.srocc == pytest.approx(stats.spearmanr(pred, mos)[0], abs=1e-12)
    assert m.krocc == pytest.approx(stats.kendalltau(pred, mos)[0], abs=1e-12)

    p0 = [np.max(mos), np.min(mos), np.mean(pred), 0.5]
    params, _ = optimize.curve_fit(spec_logistic, pred, mos, p0=p0, maxfev=int(1e8))
    fitted = spec_logistic(pred, *params)
    assert m.plcc == pytest.approx(stats.pearsonr(mos, fitted)[0], abs=1e-9)
    assert m.rmse == pytest.approx(np.sqrt(np.mean((mos - fitted) ** 2)), abs=1e-9)
    np.testing.assert_allclose(m.fit.params, params, rtol=1e-6, atol=1e-9)


def test_logistic_fit_recovers_parameters_of_noiseless_data():
    pred = np.linspace(-2.0, 1.5, 60)
    truth = (80.0, 20.0, -0.2, 0.35)
    fit = fit_logistic(pred, logistic4(pred, *truth))
    b1, b2, b3, b4 = fit.params
    np.testing.assert_allclose([b1, b2, b3, abs(b4)], truth, rtol=1e-5)
    np.testing.assert_allclose(fit(pred), spec_logistic(pred, *truth), atol=1e-6)


def test_decreasing_relation_is_fitted_and_ranked_negative():
    pred, mos = synthetic(200, 3)
    m = compute_metrics(-pred, mos)
    assert m.fit_error is None
    assert m.srocc < -0.8 and m.krocc < -0.6
    assert m.plcc > 0.8  # the fitted curve runs downhill, so it correlates positively with MOS


@pytest.mark.parametrize(
    "pred,mos,needle",
    [
        ([0.1, 0.2, 0.3], [1.0, 2.0, 3.0], "at least 4"),
        ([0.5] * 6, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "same value"),
        ([0.1, np.nan, 0.3, 0.4, 0.5], [1.0, 2.0, 3.0, 4.0, 5.0], "not finite"),
    ],
)
def test_failed_fit_is_reported_not_raised(pred, mos, needle):
    m = compute_metrics(pred, mos)
    assert needle in m.fit_error
    assert m.fit is None and np.isnan(m.plcc) and np.isnan(m.rmse)
    with pytest.raises(FitError):
        fit_logistic(np.asarray(pred), np.asarray(mos))


def test_non_convergence_is_reported():
    pred, mos = synthetic(50, 4)
    m = compute_metrics(pred, mos, maxfev=3)
    assert "curve_fit failed" in m.fit_error and np.isnan(m.plcc)
    assert m.srocc == pytest.approx(stats.spearmanr(pred, mos)[0])  # rank metrics survive


def test_too_few_points_still_gives_rank_metrics():
    m = compute_metrics([0.1, 0.3, 0.2], [1.0, 3.0, 2.0])
    assert m.srocc == pytest.approx(1.0) and m.krocc == pytest.approx(1.0)


def test_mismatched_lengths_are_a_programming_error():
    with pytest.raises(ValueError):
        compute_metrics([1.0, 2.0], [1.0])


def test_to_dict_is_strict_json():
    failed = compute_metrics([0.1, 0.2, 0.3], [1.0, 2.0, 3.0]).to_dict()
    assert failed["plcc"] is None and failed["fit"] is None
    json.dumps(failed, allow_nan=False)
    ok = compute_metrics(*synthetic(30, 5)).to_dict()
    assert len(ok["fit"]) == 4 and ok["fit_error"] is None
    json.dumps(ok, allow_nan=False)


def test_zscore_matches_scipy():
    x = np.random.default_rng(6).normal(3.0, 2.0, size=40)
    np.testing.assert_allclose(zscore(x), stats.zscore(x), atol=1e-12)
    np.testing.assert_array_equal(zscore([2.0, 2.0, 2.0]), [0.0, 0.0, 0.0])


def test_rank_unit_spans_zero_to_one_with_shared_ties():
    x = np.array([0.3, -1.0, 2.0, 0.3, 5.0])
    r = rank_unit(x)
    assert r.min() == 0.0 and r.max() == 1.0
    assert r[0] == r[3]
    np.testing.assert_array_equal(np.argsort(r, kind="stable"), np.argsort(x, kind="stable"))
    perm = np.array([4, 2, 0, 3, 1])
    np.testing.assert_array_equal(rank_unit(x[perm]), r[perm])
    np.testing.assert_array_equal(rank_unit([7.0]), [0.5])


def test_percent_mapping_is_fixed_and_monotone():
    assert to_percent(PERCENT_CENTER) == pytest.approx(50.0)
    x = np.linspace(-5, 5, 101)
    p = to_percent(x)
    assert np.all(np.diff(p) > 0) and p.min() > 0 and p.max() < 100
    # Independent of the set: a score maps to the same number alone or among others.
    assert to_percent([-1.9])[0] == pytest.approx(to_percent([-1.9, 3.0, 0.2])[0])
    assert to_percent(-1.9) == pytest.approx(100 / (1 + np.exp(1.9)))
    assert np.isfinite(to_percent([-1e6, 1e6])).all()
