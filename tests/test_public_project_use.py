"""Issue 15/18: every module of recommend/ (the words+photo search, words understanding, the one
query verb, the exact-product re-rank, shop the look, ...) builds on the project's public API only (no ``project._index`` / ``_recommendations``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

RECOMMEND = Path(__file__).resolve().parents[1] / "src" / "lookalike" / "recommend"
PRIVATE = re.compile(r"\bproject\._\w+")


@pytest.mark.parametrize("module", sorted(p.name for p in RECOMMEND.glob("*.py")))
def test_module_uses_only_public_project_members(module: str) -> None:
    source = (RECOMMEND / module).read_text()
    assert PRIVATE.findall(source) == []
    assert len(source.splitlines()) <= 400
