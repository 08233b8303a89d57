"""Install truth: every package folder is in pyproject's list, so a built wheel (not only an
editable install) carries all of the code."""
from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the check needs to run on one version

REPO = Path(__file__).resolve().parent.parent


def test_every_package_folder_is_declared():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(config["packages"])
    found = set()
    for name, folder in config["package-dir"].items():
        root = REPO / folder
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root)
            found.add(".".join((name, *rel.parts)))
    assert found, "no packages found"
    missing = sorted(found - declared)
    assert not missing, f"pyproject.toml [tool.setuptools] packages lacks {missing}"
