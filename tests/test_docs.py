"""The docs cite only paths that exist: for README.md and every docs/*.md, each repository path in inline
code or a fenced block, and each relative markdown link, must be there; and the README stays short."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: A cited repository path starts with one of these; runtime outputs (runs/, data/, ...) are not checked.
TOP_LEVEL = ("lightning_tt", "tests", "bench", "configs", "docs", "sweeps", ".github", ".ci")
#: Scripts that were removed, which the benchmark archive still names in the commands it records.
RETIRED = {"docs/benchmarks-archive.md": {"bench/bench_loss.py"}}
README_MAX_LINES = 230

FENCED = re.compile(r"^```[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
INLINE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
PATH = re.compile(r"(?<![\w./$-])((?:" + "|".join(re.escape(t) for t in TOP_LEVEL) + r")/[\w./-]*)")


def cited(text: str) -> tuple[list[str], list[str]]:
    """(repository paths in code spans and fenced blocks, markdown link targets outside code) of a text."""
    code = FENCED.findall(text)
    prose = FENCED.sub("", text)
    code += INLINE.findall(prose)
    paths = [found.rstrip(".,:;") for span in code for found in PATH.findall(span)]
    links = LINK.findall(INLINE.sub("", prose))
    return paths, links


def missing(doc: Path, root: Path = ROOT) -> list[str]:
    """The paths ``doc`` cites that are not there, sorted: code paths from ``root``, link targets from the
    doc's folder (a link's ``#anchor`` needs only its file; URLs and same-page anchors are not checked)."""
    paths, links = cited(doc.read_text())
    retired = RETIRED.get(doc.relative_to(root).as_posix(), set()) if doc.is_relative_to(root) else set()
    gone = {p for p in paths if not (root / p).exists() and p not in retired}
    for target in links:
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue
        if not (doc.parent / target.split("#", 1)[0]).exists():
            gone.add(target)
    return sorted(gone)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_cited_path_exists(doc):
    assert missing(doc) == []


def test_the_checker_flags_missing_paths_and_ignores_run_outputs(tmp_path):
    (tmp_path / "there.md").write_text("# Here\n")
    doc = tmp_path / "page.md"
    doc.write_text(
        "See `lightning_tt/eval/index.py` and `lightning_tt/eval/nowhere.py`, [a page](there.md#here),\n"
        "[a lost page](gone.md#x), [the web](https://example.org/x.md), [above](#top) and\n"
        "![a figure](figures/none.png).\n"
        "Outputs: `runs/demo/logs/`, `data/prepared-50m`, `SAVE_DIR/lightning-tt/RUN/`, `OUT/best.yaml`.\n\n"
        "```bash\npython bench/bench_index.py && lightning-tt fit --config configs/nope.yaml\n```\n"
    )
    assert missing(doc) == ["configs/nope.yaml", "figures/none.png", "gone.md#x", "lightning_tt/eval/nowhere.py"]


def test_retired_scripts_are_really_gone():
    for doc, paths in RETIRED.items():
        assert (ROOT / doc).is_file()
        assert [p for p in paths if (ROOT / p).exists()] == [], "cite it normally: it exists again"


def test_the_readme_stays_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"
