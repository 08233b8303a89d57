"""The engine's exception types: one base class, so callers can catch everything COVER raises."""
from __future__ import annotations


class CoverError(Exception):
    """Base class of every error cover-engine raises on purpose."""


class InputError(CoverError):
    """A user-supplied input file (video, image, list) is missing, unreadable or malformed."""


class WeightsError(CoverError):
    """Weight files are absent, unreachable, corrupted or do not match what the model needs."""


class EngineError(CoverError):
    """An exported engine cannot be built, loaded or run."""
