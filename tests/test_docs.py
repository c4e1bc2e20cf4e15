"""The docs say what is true: every schedule example in README.md and docs/ is growdsl's own syntax,
the README's schedule is the demo's, and every link between the pages leads to a file."""

import re
from pathlib import Path

import pytest

from growdsl.lang.parser import parse_partial

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def grow_blocks(page: Path) -> list[str]:
    return re.findall(r"^```grow\n(.*?)^```", page.read_text(), re.S | re.M)


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_schedule_example_parses_statement_by_statement(page):
    """Examples are often single statements shown side by side (a growth without its base): each
    line must be a statement growdsl reads, with no syntax error."""
    for block in grow_blocks(page):
        for line in block.splitlines():
            if line.split("#")[0].strip():
                schedule = parse_partial(line, page.name)
                assert not schedule.syntax_errors, (page.name, line, schedule.syntax_errors)


def test_the_readme_shows_the_demo_schedule_as_it_is():
    (shown,) = grow_blocks(ROOT / "README.md")
    demo = (ROOT / "schedules" / "tiny_cpu.grow").read_text()
    assert shown.strip() == "\n".join(line for line in demo.splitlines() if not line.startswith("#")).strip()
    assert sum(len(grow_blocks(page)) for page in PAGES) >= 4  # the language page's examples are tagged


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_link_between_pages_leads_to_a_file(page):
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
        assert (page.parent / target).exists(), (page.name, target)
