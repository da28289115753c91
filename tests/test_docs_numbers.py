"""The headline numbers in docs/benchmarks.md must be the numbers in the results JSON beside them.

docs/benchmarks.md has one table whose header is ``| measure | value | results JSON | key | command |``.
Each row names a file in ``benchmarks/results/`` and a key path into it; this test resolves the path
and compares the JSON number with the doc's value at the doc's rounding (0.854 matches 0.8537).

Key path syntax (documented at the top of docs/benchmarks.md):

- segments joined by ``.``: ``sizes.1000000.rows``;
- a segment with dots, spaces or brackets is double-quoted: ``rows[2]."P@10"``;
- ``[3]`` picks a list element by position;
- ``[name=value]`` picks the first list element whose ``name`` field, as text, equals ``value``;
  several conditions are joined by ``&``: ``rows[dataset=products&embedder=pixels]``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results"
HEADER = ["measure", "value", "results JSON", "key", "command"]

_TOKEN = re.compile(r'\s*(?:"(?P<quoted>[^"]*)"|(?P<bare>[^."\[\]]+)|\[(?P<bracket>[^\]]*)\]|(?P<dot>\.))')


class KeyPathError(ValueError):
    """A key path that is malformed or names nothing in the JSON."""


def parse_key(path: str) -> list[str | int | dict[str, str]]:
    """Split a key path into dict keys (str), list positions (int) and selectors (dict)."""
    steps: list[str | int | dict[str, str]] = []
    pos, expect_name = 0, True
    while pos < len(path):
        match = _TOKEN.match(path, pos)
        if match is None or match.end() == pos:
            raise KeyPathError(f"cannot parse key path {path!r} at {path[pos:]!r}")
        pos = match.end()
        if match.group("dot") is not None:
            expect_name = True
            continue
        name = match.group("quoted") if match.group("quoted") is not None else match.group("bare")
        if name is not None:
            if not expect_name:
                raise KeyPathError(f"missing '.' before {name!r} in {path!r}")
            steps.append(name.strip() if match.group("bare") is not None else name)
            expect_name = False
            continue
        inside = match.group("bracket").strip()
        if inside.isdigit():
            steps.append(int(inside))
        else:
            pairs = [part.split("=", 1) for part in inside.split("&")]
            if any(len(pair) != 2 for pair in pairs):
                raise KeyPathError(f"bad selector [{inside}] in {path!r}")
            steps.append({k.strip(): v.strip() for k, v in pairs})
        expect_name = False
    return steps


def resolve(data: Any, path: str) -> Any:
    """The value at ``path`` in ``data``; KeyPathError when any step names nothing."""
    node = data
    for step in parse_key(path):
        if isinstance(step, str):
            if not isinstance(node, dict) or step not in node:
                raise KeyPathError(f"no key {step!r} in {path!r}")
            node = node[step]
        elif isinstance(step, int):
            if not isinstance(node, list) or step >= len(node):
                raise KeyPathError(f"no element [{step}] in {path!r}")
            node = node[step]
        else:
            matches = [
                item for item in (node if isinstance(node, list) else [])
                if isinstance(item, dict) and all(str(item.get(k)) == v for k, v in step.items())
            ]
            if not matches:
                raise KeyPathError(f"no element matching {step} in {path!r}")
            node = matches[0]
    return node


def headline_rows(text: str) -> list[dict[str, str]]:
    """The rows of the table whose header is HEADER (cells stripped of backticks)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if _cells(line) == HEADER:
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                rows.append(dict(zip(HEADER, _cells(row))))
            return rows
    raise AssertionError(f"no table with header {HEADER} in {DOC}")


def _cells(line: str) -> list[str]:
    if not line.strip().startswith("|"):
        return []
    return [cell.strip().strip("`").strip() for cell in line.strip().strip("|").split("|")]


def check_row(row: dict[str, str], results: Path) -> str | None:
    """None when the row's value matches its JSON at the doc's rounding, else what is wrong."""
    shown = row["value"].replace("*", "").replace(",", "").strip()
    if not re.fullmatch(r"-?\d+(\.\d+)?", shown):
        return f"{row['measure']}: value {row['value']!r} is not a plain number"
    source = results / row["results JSON"]
    if not source.is_file():
        return f"{row['measure']}: no results file {source.name}"
    try:
        actual = resolve(json.loads(source.read_text()), row["key"])
    except KeyPathError as error:
        return f"{row['measure']}: {source.name}: {error}"
    if isinstance(actual, bool) or not isinstance(actual, (int, float)):
        return f"{row['measure']}: {row['key']} is {actual!r}, not a number"
    decimals = len(shown.split(".")[1]) if "." in shown else 0
    if abs(actual - float(shown)) > 0.5 * 10 ** -decimals + 1e-9:
        return f"{row['measure']}: doc says {shown}, {source.name} {row['key']} = {actual}"
    return None


def test_every_headline_number_is_in_its_results_json() -> None:
    rows = headline_rows(DOC.read_text())
    assert len(rows) >= 10, "the headline table lost its rows"
    problems = [p for p in (check_row(row, RESULTS) for row in rows) if p]
    assert not problems, "\n".join(problems)
    assert all(row["command"] for row in rows), "every row names the command that made it"


#: What looks like a measurement in prose: a score (0.xx...) or a number with a speed/time unit.
_MEASUREMENT = re.compile(
    r"(?<![\w.])(0\.\d{2,}|\d[\d,]*(?:\.\d+)?(?=\s?(?:ms|img/s|images/s|q/s|queries/s|s)\b))")


def unbacked_measurements(text: str, values: list[str]) -> list[str]:
    """Measurement-like numbers in ``text`` that are not headline values (compared as shown)."""
    shown = {v.replace("*", "").replace(",", "").strip() for v in values}
    return [m for m in _MEASUREMENT.findall(text) if m.replace(",", "") not in shown]


def test_readme_quotes_only_headline_numbers() -> None:
    values = [row["value"] for row in headline_rows(DOC.read_text())]
    assert not unbacked_measurements(README.read_text(), values), (
        "README quotes a measurement that is not in docs/benchmarks.md's headline table")


def test_unbacked_measurements_are_found() -> None:
    text = "P@10 0.854 at 304 img/s; p50 21.0 ms; 12 s; 2,000 products; P@10 0.999"
    assert unbacked_measurements(text, ["**0.854**", "304", "21.0"]) == ["12", "0.999"]


@pytest.fixture()
def results_dir(tmp_path: Path) -> Path:
    (tmp_path / "r.json").write_text(json.dumps(
        {"rows": [{"name": "a, b", "P@10": 0.8537}, {"name": "c", "P@10": 0.5}],
         "sizes": {"1000": {"qps": 12110.3}}}))
    return tmp_path


@pytest.mark.parametrize(("value", "key", "ok"), [
    ("0.854", 'rows[0]."P@10"', True),
    ("**0.854**", 'rows[name=a, b]."P@10"', True),
    ("0.85", "rows[0].P@10", True),
    ("0.853", 'rows[0]."P@10"', False),          # drifted
    ("0.5", 'rows[name=c]."P@10"', True),
    ("12,110", 'sizes."1000".qps', True),
    ("12,111", "sizes.1000.qps", False),
    ("0.5", 'rows[name=d]."P@10"', False),       # no such row
    ("0.5", 'rows[5]."P@10"', False),            # no such index
    ("0.5", 'rows[1]."P@1"', False),             # no such key
    ("about 0.5", 'rows[1]."P@10"', False),      # not a plain number
])
def test_check_row_catches_drift_and_missing_keys(results_dir: Path, value: str, key: str, ok: bool) -> None:
    row = {"measure": "m", "value": value, "results JSON": "r.json", "key": key, "command": "c"}
    assert (check_row(row, results_dir) is None) is ok


def test_missing_results_file_is_reported(results_dir: Path) -> None:
    row = {"measure": "m", "value": "1", "results JSON": "gone.json", "key": "a", "command": "c"}
    assert "no results file" in (check_row(row, results_dir) or "")
