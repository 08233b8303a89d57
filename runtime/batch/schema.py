"""The columns of ``cover-batch``'s results: one row per input file, scored or not.

This table is the contract for everyone reading the Parquet file (the README's table is checked
against it by the tests). Scores are COVER's raw outputs as ``cover-run`` prints them; a file
that could not be scored has null scores and its cause in ``error``, so the output always has
exactly one row per input.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

__all__ = ["Column", "RESULT_COLUMNS", "SCORE_FIELDS", "result_schema", "rows_to_table",
           "require_pyarrow"]


@dataclass(frozen=True)
class Column:
    """One output column: name, Arrow type name, whether it may be null, and what it holds."""

    name: str
    type: str
    nullable: bool
    meaning: str


#: The branch scores and their sum, in the order ``cover-run`` prints them.
SCORE_FIELDS: tuple[str, ...] = ("semantic", "technical", "aesthetic", "overall")

RESULT_COLUMNS: tuple[Column, ...] = (
    Column("path", "string", False,
           "the input file, as an absolute path (the key a resumed run matches on)"),
    Column("fingerprint", "string", True,
           "content fingerprint when it was scored, `sampled:<bytes>:<hash>` or "
           "`full:<bytes>:<hash>`; null if the file could not be opened"),
    *(Column(name, "float64", True, f"{name} score (raw, unbounded); null on error")
      for name in SCORE_FIELDS[:3]),
    Column("overall", "float64", True, "semantic + technical + aesthetic; null on error"),
    Column("frames", "int64", True, "frames in the file (1 for an image); null on error"),
    Column("resolution", "string", True, "`WIDTHxHEIGHT` as decoded; null on error"),
    Column("backend", "string", False, "backend that ran the model (`onnxruntime`, `torch`, ...)"),
    Column("colour", "string", False, "YUV -> RGB conversion the views were made with (`decord`, "
                                      "`exact`)"),
    Column("seconds", "float64", False,
           "worker wall time for this file: fingerprint, decoding, views and inference"),
    Column("error", "string", True, "one line naming the file and the cause; null when scored"),
)


def require_pyarrow():
    """The pyarrow module, or a clear error naming the extra that brings it."""
    try:
        import pyarrow
    except ImportError:
        from cover_engine.runtime.errors import CoverError

        raise CoverError("cover-batch needs pyarrow and Ray Data: "
                         "pip install 'cover-engine[ray]'") from None
    return pyarrow


def result_schema(columns: Sequence[Column] = RESULT_COLUMNS):
    """The Arrow schema of the results (also the Parquet file's schema)."""
    pa = require_pyarrow()
    types = {"string": pa.string(), "float64": pa.float64(), "int64": pa.int64()}
    return pa.schema([pa.field(c.name, types[c.type], nullable=c.nullable) for c in columns])


def rows_to_table(rows: Iterable[Mapping[str, Any]], columns: Sequence[Column] = RESULT_COLUMNS):
    """An Arrow table with exactly the result schema from row dicts (absent keys are null)."""
    pa = require_pyarrow()
    rows = list(rows)
    schema = result_schema(columns)
    return pa.Table.from_pydict({c.name: [r.get(c.name) for r in rows] for c in columns},
                                schema=schema)
