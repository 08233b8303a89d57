"""Agreement between predicted scores and MOS, the way the VQA field (and upstream COVER) reports it.

Protocol (upstream ``evaluate_one_dataset.py``, docs/cover-behaviour.md section 5): SROCC and KROCC on the
raw predictions; PLCC and RMSE after fitting the 4-parameter logistic
``y = b2 + (b1 - b2) / (1 + exp(-(x - b3) / |b4|))`` from predictions to MOS with
``scipy.optimize.curve_fit`` started at ``[max(mos), min(mos), mean(pred), 0.5]``. The fit maps the
model's arbitrary scale onto the MOS scale, so RMSE is in MOS units.

Differences from upstream, all deliberate: upstream allows ``maxfev=1e8`` function evaluations
(a degenerate set can then run for hours) where we stop at :data:`MAX_FIT_EVALUATIONS` and report
the fit as failed; a failed fit is reported (``fit_error``), never raised. Upstream computes the
metrics for the overall score only; :func:`compute_metrics` is applied to every branch as well.

Also here: the rescalings used for reports (z-score, rank in [0, 1], fixed 0-100). They are for
presentation; the raw scores are what the model outputs and what the metrics use.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import optimize, special, stats

from cover_engine.runtime.errors import FitError

#: Evaluation budget of the logistic fit. Upstream's 1e8 only matters for sets that do not
#: converge; a well-posed fit needs a few hundred.
MAX_FIT_EVALUATIONS = 100_000

#: Constants of the fixed 0-100 mapping :func:`to_percent` (see its docstring).
PERCENT_CENTER = 0.0
PERCENT_SCALE = 1.0


def logistic4(x, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """The field's 4-parameter logistic: ``b2`` at -inf, ``b1`` at +inf, centre ``b3``, scale ``|b4|``."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore"):
        return b2 + (b1 - b2) / (1.0 + np.exp(-(x - b3) / abs(b4)))


@dataclass(frozen=True)
class LogisticFit:
    """Fitted parameters ``(b1, b2, b3, b4)`` of :func:`logistic4`; call it to map predictions."""

    params: tuple[float, float, float, float]

    def __call__(self, x) -> np.ndarray:
        return logistic4(x, *self.params)


def fit_logistic(pred, mos, *, maxfev: int = MAX_FIT_EVALUATIONS,
                 scale0: float = 0.5) -> LogisticFit:
    """Fit :func:`logistic4` from ``pred`` to ``mos`` as upstream does; :class:`FitError` if it fails.

    ``scale0`` is the start of ``b4`` (upstream's 0.5; calibration also tries the spread of the
    predictions, see ``calibration``)."""
    pred = np.asarray(pred, dtype=np.float64)
    mos = np.asarray(mos, dtype=np.float64)
    if pred.size < 4:
        raise FitError(f"a 4-parameter fit needs at least 4 videos, got {pred.size}")
    if np.ptp(pred) == 0:
        raise FitError("every prediction is the same value")
    p0 = [np.max(mos), np.min(mos), np.mean(pred), scale0]
    with warnings.catch_warnings():
        # The covariance estimate (which we do not use) is often singular; that is not a failure.
        warnings.simplefilter("ignore", optimize.OptimizeWarning)
        try:
            params, _ = optimize.curve_fit(logistic4, pred, mos, p0=p0, maxfev=maxfev)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise FitError(f"curve_fit failed: {exc}") from None
    fit = LogisticFit(tuple(float(p) for p in params))
    fitted = fit(pred)
    if not np.all(np.isfinite(fitted)):
        raise FitError("the fitted curve is not finite on the predictions")
    if np.ptp(fitted) == 0:
        raise FitError("the fitted curve is flat on the predictions")
    return fit


@dataclass(frozen=True)
class Metrics:
    """One branch's agreement with MOS; ``plcc``/``rmse`` are NaN when the fit failed (``fit_error``)."""

    n: int
    srocc: float
    krocc: float
    plcc: float
    rmse: float
    fit: Optional[LogisticFit] = None
    fit_error: Optional[str] = None

    def to_dict(self) -> dict:
        """JSON-ready: NaN becomes ``None``."""
        clean = lambda v: None if isinstance(v, float) and math.isnan(v) else v  # noqa: E731
        return {
            "n": self.n,
            "srocc": clean(self.srocc),
            "krocc": clean(self.krocc),
            "plcc": clean(self.plcc),
            "rmse": clean(self.rmse),
            "fit": list(self.fit.params) if self.fit else None,
            "fit_error": self.fit_error,
        }


def _paired(pred, mos) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and MOS as flat float64 arrays of one length."""
    pred = np.asarray(pred, dtype=np.float64).ravel()
    mos = np.asarray(mos, dtype=np.float64).ravel()
    if pred.shape != mos.shape:
        raise ValueError(f"{pred.size} predictions for {mos.size} MOS values")
    return pred, mos


def compute_metrics(pred, mos, *, maxfev: int = MAX_FIT_EVALUATIONS) -> Metrics:
    """SROCC, KROCC on raw ``pred``; PLCC, RMSE after the logistic fit. Never raises on bad data."""
    pred, mos = _paired(pred, mos)
    nan = float("nan")
    n = int(pred.size)
    bad = int(np.sum(~np.isfinite(pred)) + np.sum(~np.isfinite(mos)))
    if bad:
        return Metrics(n, nan, nan, nan, nan, fit_error=f"{bad} values are not finite")
    srocc = krocc = nan
    if n >= 2 and np.ptp(pred) > 0 and np.ptp(mos) > 0:
        srocc = float(stats.spearmanr(pred, mos)[0])
        krocc = float(stats.kendalltau(pred, mos)[0])
    try:
        fit = fit_logistic(pred, mos, maxfev=maxfev)
    except FitError as exc:
        return Metrics(n, srocc, krocc, nan, nan, fit_error=str(exc))
    fitted = fit(pred)
    plcc = float(stats.pearsonr(mos, fitted)[0]) if np.ptp(mos) > 0 else nan
    rmse = float(np.sqrt(np.mean((mos - fitted) ** 2)))
    return Metrics(n, srocc, krocc, plcc, rmse, fit=fit)


def linear_metrics(pred, mos) -> Metrics:
    """Upstream's *training-time* validation (``train_one_dataset.inference_set``): predictions
    rescaled linearly to the MOS mean and std (population), then SROCC, KROCC, PLCC and RMSE.

    ``cover-train`` reports these, to compare with upstream's training logs; ``cover-eval`` uses
    the logistic fit of :func:`compute_metrics` (upstream's ``evaluate_one_dataset.py``). A
    constant or non-finite input gives NaN (which never counts as an improvement).
    """
    pred, mos = _paired(pred, mos)
    nan = float("nan")
    n = int(pred.size)
    if n < 2 or not (np.all(np.isfinite(pred)) and np.all(np.isfinite(mos))) \
            or np.ptp(pred) == 0 or np.ptp(mos) == 0:
        return Metrics(n, nan, nan, nan, nan, fit_error="constant or non-finite values")
    rescaled = (pred - pred.mean()) / pred.std() * mos.std() + mos.mean()
    return Metrics(n, float(stats.spearmanr(mos, rescaled)[0]),
                   float(stats.kendalltau(mos, rescaled)[0]),
                   float(stats.pearsonr(mos, rescaled)[0]),
                   float(np.sqrt(np.mean((mos - rescaled) ** 2))))


def zscore(x) -> np.ndarray:
    """``(x - mean) / std`` over the set (population std, as upstream's ``gaussian_rescale``).

    Depends on the whole set: adding a video changes every value. A constant set maps to zeros.
    """
    x = np.asarray(x, dtype=np.float64)
    std = np.std(x)
    return np.zeros_like(x) if std == 0 else (x - np.mean(x)) / std


def rank_unit(x) -> np.ndarray:
    """Rank within the set mapped onto [0, 1]: lowest 0, highest 1, ties share their mean rank.

    Upstream's ``uniform_rescale`` gives ``rank / n`` (so the best video gets ``(n-1)/n``, and ties
    are split in arbitrary order); this version spans the whole interval and is order-independent.
    A set of one maps to 0.5.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.size == 1:
        return np.full_like(x, 0.5)
    return (stats.rankdata(x) - 1.0) / max(x.size - 1, 1)


def to_percent(overall, center: float = PERCENT_CENTER, scale: float = PERCENT_SCALE) -> np.ndarray:
    """Fixed, set-independent map of raw overall scores to 0-100.

    ``100 / (1 + exp(-(x - center) / scale))`` with :data:`PERCENT_CENTER` = 0, :data:`PERCENT_SCALE` = 1.

    A presentation convenience, NOT a calibrated MOS: 50 means a raw overall score of 0, and the
    map is strictly increasing, so rankings and SROCC are unchanged. The constants (centre 0,
    scale 1) were chosen because the official weights' raw overall scores sit within a few units
    of zero (upstream's demo clips score about -1.9 and -0.1); they were not fitted to any MOS.
    Use :func:`compute_metrics`' logistic fit to map scores onto a particular dataset's MOS scale.
    """
    x = np.asarray(overall, dtype=np.float64)
    return 100.0 * special.expit((x - center) / scale)
