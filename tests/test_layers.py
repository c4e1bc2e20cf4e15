"""The house's floors: data flows one way, and no module imports one of a higher floor (at the top
of the file or inside a function). A new module must find its floor here."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "growdsl"

# Lowest first. `data` (the offline pipeline) sits beside `plan`: neither imports the other.
FLOORS = [
    {"errors", "files", "records"},
    {"lang"},
    {"plan", "data"},
    {"ops"},
    {"runtime"},
    {"eval"},
    {"app"},
    {"cli", "__main__"},
]
FLOOR = {name: i for i, names in enumerate(FLOORS) for name in names}
BESIDE = {("plan", "data"), ("data", "plan")}


def _part(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "growdsl" and len(parts) > 1 else None


def _imports(file: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            if node.module == "growdsl":  # from growdsl import errors
                found += [(node.lineno, f"growdsl.{alias.name}") for alias in node.names]
    return found


def test_every_module_has_a_floor_and_imports_only_its_own_or_lower_ones():
    wrong = []
    for file in sorted(ROOT.rglob("*.py")):
        relative = file.relative_to(ROOT)
        mine = relative.parts[0].removesuffix(".py") if len(relative.parts) > 1 or relative.stem != "__init__" else None
        if mine is None:
            continue
        assert mine in FLOOR, f"growdsl/{relative}: a new part of the house; give it a floor in this test"
        for line, module in _imports(file):
            theirs = _part(module)
            if theirs is None or theirs == mine or theirs not in FLOOR:
                continue
            if FLOOR[theirs] > FLOOR[mine] or (mine, theirs) in BESIDE:
                wrong.append(f"growdsl/{relative}:{line} imports {module}")
    assert not wrong, "\n".join(wrong)
