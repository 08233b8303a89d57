"""Batch scoring on Ray Data (``cover-batch``); needs the ``ray`` extra.

Importing this package does not import Ray or pyarrow; the modules that need them import them
when called and say which extra to install when they are missing.
"""
from cover_engine.runtime.batch.schema import RESULT_COLUMNS, result_schema
from cover_engine.runtime.batch.scorer import CoverScorer

__all__ = ["CoverScorer", "RESULT_COLUMNS", "result_schema"]
