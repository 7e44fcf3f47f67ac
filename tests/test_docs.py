"""Every requirement id cited in the code resolves to an entry in docs/ (issue 8 item 8).

Code and tests cite product promises (``P-16``), test-catalogue entries (``UP-07``, ``CC-01``) and measured
facts (``F7``). Those ids mean something only if the repository says what they are: ``docs/promises.md`` and
``docs/testing.md`` hold one entry (a heading or the first cell of a table row) per id. A new citation with
no entry fails here, the way an ungated route fails ``test_route_gates.py``.
"""

from __future__ import annotations

import io
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("marketplace", "agency_app", "tests", "bench", "migrations", "docs", "README.md")
TEXT_SUFFIXES = {".py", ".html", ".js", ".txt", ".md", ".mako", ".sql", ".toml", ".cfg", ".ini"}

# P-16; a catalogue id such as UP-07 (two capitals, so "UP-07" is not read as "P-07"); a fact such as F7
ID = r"(?:P-\d\d|[A-Z]{2}-\d\d|F\d{1,2})"
CITED = re.compile(rf"(?<![\w-]){ID}(?![\w])")
# "F7-F9", "P-01" en dash "P-03": the ids between the ends are cited too
RANGE = re.compile(r"(?<![\w-])(P-|[A-Z]{2}-|F)(\d{1,2})\s?[-\u2013]\s?\1(\d{1,2})(?![\w])")
HEADING = re.compile(rf"^#{{1,6}}\s+({ID})\b", re.MULTILINE)
TABLE_ROW = re.compile(rf"^\|\s*({ID})\s*\|", re.MULTILINE)

CATALOGUE = {"AZ": 10, "AN": 7, "IN": 7, "UP": 7, "CR": 6, "PY": 9, "JB": 5, "CC": 6, "PV": 7}


_PROSE = {tokenize.COMMENT, tokenize.STRING, getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING)}


def _python_text(source: str) -> Iterator[str]:
    """Comments and strings only: an id is cited in prose, and identifiers are not citations."""
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type in _PROSE:
                yield token.string
    except (tokenize.TokenError, SyntaxError):
        yield source  # not valid Python (a template): read it all


def _files(root: Path) -> Iterator[Path]:
    for name in SCANNED:
        path = root / name
        if path.is_file():
            yield path
        elif path.is_dir():
            for file in sorted(path.rglob("*")):
                if file.is_file() and file.suffix in TEXT_SUFFIXES and "__pycache__" not in file.parts:
                    yield file


def cited_ids(root: Path) -> dict[str, set[str]]:
    """id -> the files (relative to ``root``) that cite it."""
    found: dict[str, set[str]] = {}
    for file in _files(root):
        source = file.read_text(encoding="utf-8", errors="replace")
        chunks = _python_text(source) if file.suffix == ".py" else [source]
        for chunk in chunks:
            ids = set(CITED.findall(chunk))
            for prefix, first, last in RANGE.findall(chunk):
                width = 1 if prefix == "F" else 2
                ids.update(f"{prefix}{n:0{width}d}" for n in range(int(first), int(last) + 1))
            for cited in ids:
                found.setdefault(cited, set()).add(str(file.relative_to(root)))
    return found


def defined_ids(root: Path) -> set[str]:
    """Ids with an entry in docs/*.md: a heading that starts with the id, or a table row whose first cell is it."""
    defined: set[str] = set()
    for page in sorted((root / "docs").glob("*.md")):
        text = page.read_text(encoding="utf-8")
        defined.update(HEADING.findall(text))
        defined.update(TABLE_ROW.findall(text))
    return defined


def unresolved(root: Path) -> dict[str, set[str]]:
    defined = defined_ids(root)
    return {cited: files for cited, files in cited_ids(root).items() if cited not in defined}


def test_every_cited_id_resolves_to_an_entry_in_docs() -> None:  # issue 8 item 8
    cited = cited_ids(ROOT)
    defined = defined_ids(ROOT)
    missing = {name: files for name, files in cited.items() if name not in defined}
    assert not missing, "cited ids with no entry in docs/*.md: " + "; ".join(
        f"{name} (in {', '.join(sorted(files))})" for name, files in sorted(missing.items()))
    outside_docs = {name for name, files in cited.items() if any(not f.startswith("docs/") for f in files)}
    assert len(outside_docs) > 60  # the scanner does see the code's citations (about 80 distinct ids today)


def test_every_promise_catalogue_entry_and_fact_has_an_entry() -> None:  # issue 8 item 8
    expected = {f"P-{n:02d}" for n in range(1, 31)} | {f"F{n}" for n in range(1, 15)}
    expected |= {f"{family}-{n:02d}" for family, count in CATALOGUE.items() for n in range(1, count + 1)}
    assert expected - defined_ids(ROOT) == set()


def _plant(root: Path, text: str, docs: str = "") -> None:
    (root / "marketplace").mkdir(parents=True)
    (root / "docs").mkdir()
    (root / "marketplace" / "mod.py").write_text(text)
    (root / "docs" / "promises.md").write_text(docs)


# built at run time so that this file does not itself cite them
UNKNOWN_PROMISE, UNKNOWN_ENTRY, UNKNOWN_FACT = "P-" + "99", "QQ" + "-01", "F" + "77"


@pytest.mark.parametrize("planted", [
    f"# enforces {UNKNOWN_PROMISE}\n",
    f'def test_x() -> None:\n    """Quota ({UNKNOWN_ENTRY})."""\n',
    f"LIMIT = 4  # the fact ({UNKNOWN_FACT}) behind it\n",
    f"# {UNKNOWN_FACT}: measured\n",
])
def test_the_guard_catches_a_planted_unknown_id(tmp_path: Path, planted: str) -> None:
    """Negative control: an id the docs do not define is reported, with the file that cites it."""
    _plant(tmp_path, "# enforces P-01 (UP-07, F7)\n" + planted,
           docs="### P-01 Registration\n\n| UP-07 | quota |\n| F7 | a fact |\n")
    missing = unresolved(tmp_path)
    assert set(missing) == {next(i for i in (UNKNOWN_PROMISE, UNKNOWN_ENTRY, UNKNOWN_FACT) if i in planted)}
    assert missing.popitem()[1] == {"marketplace/mod.py"}


def test_a_mention_in_prose_is_not_an_entry(tmp_path: Path) -> None:
    _plant(tmp_path, "# see PY-01\n", docs="Webhooks are checked as PY-01 says.\n\n## PY-02 Once only\n")
    assert set(unresolved(tmp_path)) == {"PY-01"}


def test_ranges_cite_every_id_between_their_ends(tmp_path: Path) -> None:
    _plant(tmp_path, '"""Because of F7-F9 and P-01\u2013P-03."""\n', docs="| F7 | x |\n| F9 | x |\n")
    assert set(unresolved(tmp_path)) == {"F8", "P-01", "P-02", "P-03"}


def test_identifiers_and_words_are_not_citations(tmp_path: Path) -> None:
    _plant(tmp_path, "F1 = 'UTF-8 AES-256 SHA-256 CJ-7K4M-Q2P9 40P01'\nUP07 = 1  # 0xF7\n")
    assert unresolved(tmp_path) == {}


def test_docs_name_only_test_files_that_exist() -> None:
    named = {path for page in (ROOT / "docs").glob("*.md")
             for path in re.findall(r"`(tests/[\w/.]+)`", page.read_text(encoding="utf-8"))}
    assert named, "the docs name the tests that hold each entry"
    assert sorted(path for path in named if not (ROOT / path).exists()) == []
