"""The docs say what is true: every schedule example in README.md and docs/ is growdsl's own syntax,
every command example is a command growdsl takes (and the ones that read only the repository run,
and succeed), the README's schedule is the demo's, and every link between the pages leads to a file."""

import re
import shlex
from pathlib import Path

import pytest

from growdsl.cli import _parser, main
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


def growdsl_commands(page: Path) -> list[list[str]]:
    """The arguments of every growdsl command in the page's shell examples (```bash blocks), however
    it is started (growdsl, .venv/bin/growdsl, python -m growdsl, torchrun ... -m growdsl)."""
    commands = []
    for block in re.findall(r"^```(?:bash|sh|console)\n(.*?)^```", page.read_text(), re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line.removeprefix("$ "))
            for part in line.split("&&"):
                words = shlex.split(part)
                starts = [i for i, w in enumerate(words) if w == "growdsl" or w.endswith("/growdsl")]
                if starts and not words[0].startswith(("pip", "python3 -m venv")):
                    commands.append(words[starts[0] + 1 :])
    return commands


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_command_example_is_one_growdsl_takes(page, monkeypatch, capsys):
    """Each parses with growdsl's own arguments; `validate` and `plan` of the repository's schedules
    (no placeholder in capitals, no data named) run and succeed."""
    monkeypatch.chdir(ROOT)
    for argv in growdsl_commands(page):
        try:
            _parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"{page.name}: growdsl {' '.join(argv)}: {capsys.readouterr().err}")
        placeholder = any(re.fullmatch(r"[A-Z][A-Z_]*(\.\w+)?|.*[A-Z]{3,}.*", w) for w in argv)
        if argv[0] in ("validate", "plan") and not placeholder and "--data" not in argv:
            assert main(argv) == 0, (page.name, argv, capsys.readouterr().err)


def test_the_command_examples_are_found():
    """A test that finds no example would pass whatever the docs say."""
    found = [argv[0] for page in PAGES for argv in growdsl_commands(page)]
    assert {"run", "baseline", "compare"} <= set(found), found
