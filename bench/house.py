"""How the house reads, in numbers: the largest files, the most complex functions (cyclomatic
complexity counted from the AST, as radon counts it: one plus each branch, loop, boolean operator,
except clause, conditional expression and comprehension condition), comment and docstring lines per
code line, the README's length and mypy's scope. Prints markdown tables.

    .venv/bin/python bench/house.py
"""

from __future__ import annotations

import ast
import io
import sys
import tokenize
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BRANCHES = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.ExceptHandler, ast.IfExp, ast.Assert, ast.match_case)


def complexity(function: ast.AST) -> int:
    """One plus the decision points inside `function`, nested functions left to themselves."""
    count = 1
    stack = list(ast.iter_child_nodes(function))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        if isinstance(node, BRANCHES):
            count += 1
        elif isinstance(node, ast.BoolOp):
            count += len(node.values) - 1
        elif isinstance(node, ast.comprehension):
            count += 1 + len(node.ifs)
        stack.extend(ast.iter_child_nodes(node))
    return count


def functions(path: Path):
    """(qualified name, complexity) of every function in a file."""
    tree = ast.parse(path.read_text())

    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f"{prefix}{child.name}", complexity(child)
                yield from walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.")

    yield from walk(tree, "")


def explained(path: Path) -> tuple[int, int]:
    """(lines of comments and docstrings, lines of code) in a file."""
    source = path.read_text()
    comments = {
        t.start[0] for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type == tokenize.COMMENT
    }
    docs = set()
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                docs.update(range(body[0].lineno, body[0].end_lineno + 1))
    code = {
        i for i, line in enumerate(source.splitlines(), 1) if line.strip() and not line.strip().startswith("#")
    } - docs
    return len(comments | docs), len(code)


def main() -> None:
    files = sorted((ROOT / "growdsl").rglob("*.py"))
    sizes = sorted(((len(f.read_text().splitlines()), f) for f in files), reverse=True)
    print("| largest files | lines |\n|---|---|")
    for lines, f in sizes[:5]:
        print(f"| {f.relative_to(ROOT)} | {lines} |")
    ranked = sorted(((c, f"{f.relative_to(ROOT)}:{name}") for f in files for name, c in functions(f)), reverse=True)
    print("\n| most complex functions | complexity |\n|---|---|")
    for c, name in ranked[:10]:
        print(f"| {name} | {c} |")
    said, code = map(sum, zip(*(explained(f) for f in files)))
    mypy = tomllib.loads((ROOT / "pyproject.toml").read_text()).get("tool", {}).get("mypy", {}).get("files", "?")
    readme = len((ROOT / "README.md").read_text().splitlines())
    print(f"\ncomment and docstring lines per code line: {said / code:.2f} ({said} / {code})")
    print(f"functions: {len(ranked)}, of complexity above 10: {sum(c > 10 for c, _ in ranked)}")
    print(f"mypy checks: {mypy}")
    print(f"README: {readme} lines")


if __name__ == "__main__":
    sys.exit(main())
