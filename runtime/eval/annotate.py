"""What a raw score means: a calibration's MOS and a reference set's percentile, added to results.

``cover-run`` reads the files first (:func:`read_meaning_files`, and the calibration an engine
folder's manifest may carry, :func:`embedded_calibration`), so a bad file is reported before
any model is built and the CSV gets its columns; once the backend exists,
:meth:`Meaning.check` refuses files made for another model's scores, and
:meth:`Meaning.annotate` adds ``mos`` / ``percentile`` to each :class:`FileScore` (and ``mos``
to each of its windows). Raw scores are never replaced.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from cover_engine.runtime.eval.calibration import Calibration, load_calibration, sampling_notes
from cover_engine.runtime.eval.reference import ReferenceDistribution, load_reference
from cover_engine.runtime.model_identity import ModelIdentity
from cover_engine.runtime.results import FileScore

__all__ = ["Meaning", "read_meaning_files", "embedded_calibration"]

#: How a calibration found in an engine folder is named in messages.
EMBEDDED = "the engine folder's manifest.json"


def read_meaning_files(calibration=None, reference=None
                       ) -> tuple[Optional[Calibration], Optional[ReferenceDistribution]]:
    """The calibration and reference distribution files, read and checked as files (one
    :class:`~cover_engine.runtime.errors.CoverError` line naming a bad one)."""
    return (load_calibration(calibration) if calibration is not None else None,
            load_reference(reference) if reference is not None else None)


def embedded_calibration(backend: str, engines) -> Optional[dict]:
    """The calibration in the manifest of the engine folder ``engines`` (None without one, for
    the torch backend, and for the cached automatic export, which never carries one)."""
    if engines is None or backend == "torch":
        return None
    from cover_engine.runtime.engines.manifest import load_manifest

    return load_manifest(engines, verify_files=False).calibration


@dataclass(frozen=True)
class Meaning:
    """The calibration and reference distribution applied to a run's scores (either may be None)."""

    calibration: Optional[Calibration] = None
    reference: Optional[ReferenceDistribution] = None
    calibration_source: str = ""
    reference_source: str = ""

    @classmethod
    def of(cls, calibration: Optional[Calibration], reference: Optional[ReferenceDistribution],
           embedded: Optional[dict] = None, *, calibration_source: str = "--calibration",
           reference_source: str = "--percentile-of") -> "Meaning":
        """A given calibration file wins over one ``embedded`` in the engine folder."""
        if calibration is None and embedded is not None:
            calibration = Calibration.from_dict(embedded, f"{EMBEDDED}: calibration")
            calibration_source = EMBEDDED
        return cls(calibration, reference, calibration_source, reference_source)

    @property
    def extra_columns(self) -> tuple[str, ...]:
        """The CSV columns these add: ``mos``, ``percentile``."""
        return (("mos",) if self.calibration else ()) + (("percentile",) if self.reference else ())

    def check(self, identity: ModelIdentity, *, seed: Optional[int] = None, clips: int = 1,
              colour: Optional[str] = None, log=lambda msg: None) -> None:
        """Refuse a calibration or distribution made for another model (other weights, head or
        views: :class:`CalibrationError`); smaller sampling differences (seed, clips, colour
        conversion) are only noted through ``log``."""
        if self.calibration is not None:
            self.calibration.check(identity, source=self.calibration_source)
            if self.calibration_source == EMBEDDED:
                log(f"calibration {self.calibration.name!r} from {EMBEDDED}: adding "
                    "calibrated MOS")
            for note in self.calibration.sampling_notes(seed=seed, clips=clips, colour=colour):
                log(f"note: {note}; calibrated MOS may shift slightly")
        if self.reference is not None:
            self.reference.check(identity, source=self.reference_source)
            for note in sampling_notes(self.reference.sampling, "reference set", seed=seed,
                                       clips=clips, colour=colour):
                log(f"note: {note}; percentiles may shift slightly")

    def annotate(self, score: FileScore) -> FileScore:
        """``score`` with ``mos`` (file and windows) and ``percentile`` filled in, in place."""
        if self.calibration is not None:
            score.mos = self.calibration.predict_one(score.overall)
            for segment in score.segments or ():
                segment["mos"] = self.calibration.predict_one(segment["overall"])
        if self.reference is not None:
            score.percentile = self.reference.percentile_one(score.overall)
        return score

    def csv_values(self, score: FileScore) -> dict[str, str]:
        """The extra columns' values of one row (``repr``: exact)."""
        values = {}
        if self.calibration is not None:
            values["mos"] = repr(float(score.mos))
        if self.reference is not None:
            values["percentile"] = repr(float(score.percentile))
        return values
