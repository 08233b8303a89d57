"""Calibrated MOS: COVER's raw scores mapped onto one labelled set's MOS scale.

Raw scores are unbounded and only their order means something. A calibration is the field's
4-parameter logistic (the same curve and start point upstream fits before PLCC/RMSE, see
``metrics``) fitted once from a labelled set's raw scores to its MOS, and then applied as a
fixed formula to any new score::

    mos = b2 + (b1 - b2) / (1 + exp(-(x - b3) / |b4|))      x = the raw overall score

It is fitted for the overall score and, where that fit succeeds, for each branch. The file
(JSON, :data:`CALIBRATION_SCHEMA`) records everything needed to apply it and to know when not
to: the parameters, the set's MOS range and scale, its size, the fit's RMSE/PLCC/SROCC on that
set, the model it was made for (weights' sha256, head, view settings; a model with another
identity is refused) and the sampling settings. A set too small to fit, or a fit that fails,
is refused with the reason; nothing is written then.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from scipy import stats

from cover_engine.runtime.constants import (BRANCHES, MIN_CALIBRATION_VIDEOS, MOS_SCALES)
from cover_engine.runtime.errors import CoverError, InputError
from cover_engine.runtime.eval.calibration_schema import (CALIBRATION_SCHEMA, FORMULA, SCHEMA_ID,
                                                          SCHEMA_VERSION, check_document)
from cover_engine.runtime.eval.metrics import FitError, LogisticFit, fit_logistic
from cover_engine.runtime.model_identity import ModelIdentity

__all__ = ["CalibrationError", "Calibration", "TargetFit", "MosScale", "fit_calibration",
           "load_calibration", "infer_scale", "calibrated_metrics", "CALIBRATION_SCHEMA",
           "FORMULA"]

TARGETS: tuple[str, ...] = ("overall",) + BRANCHES


class CalibrationError(CoverError):
    """A calibration cannot be fitted, read, or applied to these scores."""


def refuse_other_model(own: ModelIdentity, scores: ModelIdentity, source: str, what: str,
                       remedy: str) -> None:
    """Raise :class:`CalibrationError` when ``scores`` come from another model than ``own``
    (a calibration's or a reference distribution's), saying what differs and ``remedy``."""
    problem = own.mismatch(scores)
    if problem:
        where = f"{source}: " if source else ""
        raise CalibrationError(f"{where}{what} {problem.replace(' vs ', ', not ')}; these "
                               f"scores come from another model. {remedy}")


@dataclass(frozen=True)
class TargetFit:
    """The logistic of one target (``overall`` or a branch) and how well it fits its set."""

    b1: float
    b2: float
    b3: float
    b4: float
    rmse: float   # MOS units, on the fit set
    plcc: float
    srocc: float

    @property
    def params(self) -> tuple[float, float, float, float]:
        return (self.b1, self.b2, self.b3, self.b4)

    def __call__(self, raw) -> np.ndarray:
        return LogisticFit(self.params)(raw)

    def to_dict(self) -> dict:
        return {"b1": self.b1, "b2": self.b2, "b3": self.b3, "b4": self.b4,
                "rmse": self.rmse, "plcc": self.plcc, "srocc": self.srocc}


@dataclass(frozen=True)
class MosScale:
    """The MOS of the fit set: observed range and moments, and the nominal scale (e.g. 1-5)."""

    min: float
    max: float
    mean: float
    std: float
    scale_low: float
    scale_high: float
    scale_source: str  # "given" or "inferred" (the smallest common scale holding the range)

    def to_dict(self) -> dict:
        return {"min": self.min, "max": self.max, "mean": self.mean, "std": self.std,
                "scale": [self.scale_low, self.scale_high], "scale_source": self.scale_source}


def infer_scale(mos: np.ndarray) -> tuple[float, float]:
    """The narrowest of :data:`MOS_SCALES` that holds every MOS value, else the observed range."""
    lo, hi = float(np.min(mos)), float(np.max(mos))
    fitting = [s for s in MOS_SCALES if s[0] <= lo and hi <= s[1]]
    return min(fitting, key=lambda s: s[1] - s[0]) if fitting else (lo, hi)


@dataclass(frozen=True)
class Calibration:
    """A fitted calibration (see the module notes); ``predict`` applies it."""

    name: str
    fits: dict[str, TargetFit]              # "overall" always; branches whose fit succeeded
    fit_errors: dict[str, str]              # branches whose fit failed, with the reason
    n: int
    mos: MosScale
    identity: ModelIdentity
    sampling: dict                          # {"seed", "clips"} the fit set was scored with
    created: str = ""
    labels: Optional[str] = None
    backend: Optional[str] = None
    tools: dict = field(default_factory=dict)

    def predict(self, raw, target: str = "overall") -> np.ndarray:
        """Calibrated MOS for raw scores of ``target`` (float64, same shape)."""
        if target not in self.fits:
            why = self.fit_errors.get(target, "not part of this calibration")
            raise CalibrationError(f"calibration {self.name!r} has no {target} fit ({why})")
        return self.fits[target](raw)

    def predict_one(self, raw: float, target: str = "overall") -> float:
        return float(self.predict(np.float64(raw), target))

    def check(self, identity: ModelIdentity, *, source: str = "") -> None:
        """Refuse scores of another model (:class:`CalibrationError` naming what differs)."""
        refuse_other_model(self.identity, identity, source,
                           f"calibration {self.name!r} was fitted for",
                           "Fit one for this model with `cover-eval --fit-calibration`")

    def sampling_notes(self, *, seed: Optional[int], clips: int,
                       colour: Optional[str] = None) -> list[str]:
        """Sampling differences that shift scores a little without making them another model's."""
        return sampling_notes(self.sampling, "calibration set", seed=seed, clips=clips,
                              colour=colour)

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA_ID,
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "created": self.created,
            "formula": FORMULA,
            "input": "raw COVER scores: overall = semantic + technical + aesthetic",
            "fits": {t: (self.fits[t].to_dict() if t in self.fits else None) for t in TARGETS},
            "fit_errors": dict(self.fit_errors),
            "n": self.n,
            "mos": self.mos.to_dict(),
            "labels": self.labels,
            "weights": self.identity.to_dict(),
            "sampling": {**self.sampling, "views": self.identity.views},
            "backend": self.backend,
            "tools": dict(self.tools),
        }

    @classmethod
    def from_dict(cls, data: Mapping, source: str = "calibration") -> "Calibration":
        """Parse and check a calibration's JSON form (:class:`CalibrationError` says why not)."""
        check_document(data, schema=CALIBRATION_SCHEMA, schema_id=SCHEMA_ID,
                       version=SCHEMA_VERSION, kind="calibration", source=source,
                       error=CalibrationError)
        fits = {t: TargetFit(**f) for t, f in data["fits"].items() if f is not None}
        for target, fit in fits.items():
            if not all(math.isfinite(v) for v in fit.params) or fit.b4 == 0:
                raise CalibrationError(f"{source}: the {target} parameters are not usable "
                                       f"({list(fit.params)})")
        mos = data["mos"]
        sampling = {k: v for k, v in data["sampling"].items() if k != "views"}
        return cls(name=data["name"], created=data["created"], n=data["n"],
                   fits=fits, fit_errors=dict(data.get("fit_errors") or {}),
                   mos=MosScale(mos["min"], mos["max"], mos["mean"], mos["std"],
                                mos["scale"][0], mos["scale"][1], mos["scale_source"]),
                   identity=ModelIdentity(base=data["weights"]["base"],
                                          head=data["weights"]["head"],
                                          views=data["sampling"]["views"]),
                   sampling=sampling, labels=data.get("labels"), backend=data.get("backend"),
                   tools=dict(data.get("tools") or {}))

    def save(self, path) -> Path:
        """Write atomically (a temporary file renamed into place): never a half-written file."""
        return write_json_atomic(path, self.to_dict())


def sampling_notes(recorded: Mapping, what: str, *, seed: Optional[int], clips: int,
                   colour: Optional[str] = None) -> list[str]:
    """How the sampling of scores differs from the ``recorded`` sampling of a ``what``."""
    notes = []
    if recorded.get("seed") != seed:
        notes.append(f"the {what} was sampled with seed {recorded.get('seed')}, these scores "
                     f"with {seed}")
    if recorded.get("clips") != clips:
        notes.append(f"the {what} averaged {recorded.get('clips')} clip(s), these scores {clips}")
    if colour is not None and recorded.get("colour", colour) != colour:
        notes.append(f"the {what} was converted with --colour {recorded.get('colour')}, these "
                     f"scores with {colour}")
    return notes


def write_json_atomic(path, data: Mapping) -> Path:
    """``data`` as indented JSON at ``path``, whole or not at all (``durable.write_atomic``:
    :class:`~cover_engine.runtime.errors.OutputError` naming the path when it cannot be)."""
    from cover_engine.runtime.durable import write_atomic

    path = Path(path)
    write_atomic(path, (json.dumps(data, indent=1, allow_nan=False) + "\n").encode("utf-8"))
    return path


def read_json(path, what: str) -> Any:
    """A JSON file given by a user, read strictly (``safe_json``: no NaN, duplicate keys, ...):
    :class:`InputError` naming the file and the cause."""
    from cover_engine.runtime.safe_json import JSONRefused, loads_strict

    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such {what} file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the {what} file ({exc.strerror or exc})") from None
    try:
        return loads_strict(data)
    except JSONRefused as exc:
        raise InputError(f"{path}: not a readable {what} file ({exc})") from None


def load_calibration(path) -> Calibration:
    """Read a calibration file (one clear error naming the file if it is not a usable one)."""
    return Calibration.from_dict(read_json(path, "calibration"), str(path))


def _tools() -> dict:
    from cover_engine import __version__

    return {"cover_engine": __version__, "numpy": np.__version__}


def fit_calibration(pred: Mapping[str, Sequence[float]], mos: Sequence[float], *, name: str,
                    identity: ModelIdentity, sampling: Mapping[str, Any],
                    scale: Optional[tuple[float, float]] = None, labels: Optional[str] = None,
                    backend: Optional[str] = None,
                    min_videos: int = MIN_CALIBRATION_VIDEOS) -> Calibration:
    """Fit the logistic from raw scores ``pred[target]`` to ``mos`` for each target.

    Refused (:class:`CalibrationError`): fewer than ``min_videos`` videos, MOS or predictions
    that are constant or not finite, and an overall fit that fails or does not follow the MOS
    (fitted curve flat, or non-positive PLCC). A branch whose fit fails is recorded as such.
    """
    mos_arr = np.asarray(mos, dtype=np.float64).ravel()
    n = int(mos_arr.size)
    if n < min_videos:
        raise CalibrationError(f"{n} scored videos are too few to fit a calibration: at least "
                               f"{min_videos} are needed (dozens for a useful one)")
    if not np.all(np.isfinite(mos_arr)):
        raise CalibrationError("some MOS values are not finite")
    if np.ptp(mos_arr) == 0:
        raise CalibrationError(f"every MOS is {mos_arr[0]}: nothing to calibrate against")
    if scale is not None and not (scale[0] < scale[1]):
        raise CalibrationError(f"MOS scale {scale} is empty: give it as LOW,HIGH with LOW < HIGH")
    fits: dict[str, TargetFit] = {}
    errors: dict[str, str] = {}
    for target in TARGETS:
        raw = np.asarray(pred[target], dtype=np.float64).ravel()
        if raw.shape != mos_arr.shape:
            raise ValueError(f"{raw.size} {target} scores for {n} MOS values")
        try:
            fits[target] = _fit_one(raw, mos_arr)
        except FitError as exc:
            errors[target] = str(exc)
    if "overall" not in fits:
        raise CalibrationError(f"the logistic fit of the overall score failed: "
                               f"{errors['overall']}; no calibration written")
    lo, hi = scale if scale is not None else infer_scale(mos_arr)
    return Calibration(
        name=name, fits=fits, fit_errors=errors, n=n,
        mos=MosScale(float(mos_arr.min()), float(mos_arr.max()), float(mos_arr.mean()),
                     float(mos_arr.std()), float(lo), float(hi),
                     "given" if scale is not None else "inferred"),
        identity=identity, sampling=dict(sampling),
        created=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        labels=labels, backend=backend, tools=_tools())


def _fit_one(raw: np.ndarray, mos: np.ndarray) -> TargetFit:
    """Upstream's fit from upstream's start; then from ``b4`` = the spread of the scores, which
    converges where scores cluster far tighter than 0.5 (other weights, a branch). The
    curve with the smaller residual wins; the curve itself is upstream's either way."""
    if not np.all(np.isfinite(raw)):
        raise FitError(f"{int(np.sum(~np.isfinite(raw)))} scores are not finite")
    best, error = None, None
    for scale0 in dict.fromkeys((0.5, float(np.std(raw)) or 0.5)):
        try:
            fit = fit_logistic(raw, mos, scale0=scale0)
        except FitError as exc:
            error = error or exc
            continue
        rmse = float(np.sqrt(np.mean((fit(raw) - mos) ** 2)))
        if best is None or rmse < best[1]:
            best = (fit, rmse)
    if best is None:
        raise error
    fit, rmse = best
    fitted = fit(raw)
    plcc = float(stats.pearsonr(fitted, mos)[0])
    if not plcc > 0:
        raise FitError(f"the fitted curve does not follow the MOS (PLCC {plcc:.3f})")
    b1, b2, b3, b4 = fit.params
    return TargetFit(b1, b2, b3, abs(b4), rmse=rmse, plcc=plcc,
                     srocc=float(stats.spearmanr(raw, mos)[0]))


def calibrated_metrics(cal: Calibration, pred: Mapping[str, Sequence[float]],
                       mos: Sequence[float]) -> dict[str, dict]:
    """Agreement of the calibrated predictions with ``mos``, per target the calibration fits:
    PLCC and RMSE of ``cal.predict(raw)`` as they are (no refit: the honest number on a set the
    calibration was not fitted on), SROCC (unchanged by the monotone map)."""
    mos_arr = np.asarray(mos, np.float64)
    out = {}
    for target in TARGETS:
        if target not in cal.fits:
            continue
        raw = np.asarray(pred[target], np.float64)
        predicted = cal.predict(raw, target)
        varied = len(mos_arr) >= 2 and np.ptp(mos_arr) > 0 and np.ptp(predicted) > 0
        out[target] = {
            "n": int(len(mos_arr)),
            "srocc": float(stats.spearmanr(raw, mos_arr)[0]) if varied else None,
            "plcc": float(stats.pearsonr(predicted, mos_arr)[0]) if varied else None,
            "rmse": float(np.sqrt(np.mean((predicted - mos_arr) ** 2))) if len(mos_arr) else None,
        }
    return out
