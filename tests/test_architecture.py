"""The package's shape (docs/architecture.md): imports run one way between the packages, no
module imports another in a circle, imports sit at the top of the file unless a comment says why,
and the cheap entry points stay free of torch."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# What each part may import (besides itself): docs/architecture.md's table, each package's
# __init__.py "May import:" line. data_prep's preview draws its grid with progan.generator.images.
BASE = {"progan.runtime": set(), "progan.shapes": set()}
ALLOWED = {
    **BASE,
    "progan.nets": {"progan.runtime", "progan.shapes"},
    "progan.data": {"progan.runtime", "progan.shapes"},
    "progan.generator": {"progan.nets", "progan.runtime", "progan.shapes"},
    "progan.metrics": {"progan.data", "progan.generator", "progan.nets", "progan.runtime", "progan.shapes"},
    "progan.train": {"progan.data", "progan.generator", "progan.metrics", "progan.nets", "progan.runtime",
                     "progan.shapes"},
    "data_prep": {"progan.data", "progan.generator", "progan.runtime", "progan.shapes"},
}
MAX_FUNCTION_LOCAL_IMPORTS = 24  # the bound: fewer than 25, each with its reason


def module_files() -> dict[str, Path]:
    files = {}
    for path in [*REPO.glob("progan/**/*.py"), *REPO.glob("data_prep/*.py"), REPO / "train.py", REPO / "generate.py",
                 REPO / "hubconf.py"]:
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        files[name.removesuffix(".__init__")] = path
    return files


def part_of(module: str) -> str | None:
    """The part of the table a module belongs to; None for the entry scripts and progan/__init__."""
    parts = module.split(".")
    if parts[0] == "data_prep":
        return "data_prep"
    if parts[0] == "progan" and len(parts) > 1:
        return f"progan.{parts[1]}"
    return None


class ProjectImport:
    def __init__(self, source: str, target: str, line: int, local: bool, path: Path) -> None:
        self.source, self.target, self.line, self.local, self.path = source, target, line, local, path

    def __repr__(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line} {self.source} -> {self.target}"


def project_imports(modules: dict[str, Path]) -> list[ProjectImport]:
    """Every import of a project module, at the top or inside a function."""
    found = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}

        def in_function(node) -> bool:
            while node in parents:
                node = parents[node]
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    return True
            return False

        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                           for a in node.names]
            else:
                continue
            for target in dict.fromkeys(targets):
                if target.split(".")[0] in ("progan", "data_prep"):
                    found.append(ProjectImport(name, target, node.lineno, in_function(node), path))
    return found


MODULES = module_files()
IMPORTS = project_imports(MODULES)


def test_the_rule_knows_every_part_of_the_package():
    parts = {part_of(name) for name in MODULES} - {None}
    assert parts == set(ALLOWED), "a new package needs its row in ALLOWED and docs/architecture.md"


def test_imports_run_one_way_between_the_packages():
    upward = [imp for imp in IMPORTS
              if part_of(imp.source) and part_of(imp.target) and part_of(imp.source) != part_of(imp.target)
              and part_of(imp.target) not in ALLOWED[part_of(imp.source)]]
    assert upward == [], "imports against docs/architecture.md's rule"


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), iteratively."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycles_finds_a_circle_and_nothing_else():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_another_in_a_circle():
    edges: dict[str, set[str]] = {}
    for imp in IMPORTS:
        if imp.target in MODULES and imp.target != imp.source:
            edges.setdefault(imp.source, set()).add(imp.target)
    assert cycles(edges) == []


def has_reason(path: Path, line: int) -> bool:
    """A comment on the import's line, or above it past the other imports of the same block."""
    lines = path.read_text().splitlines()
    at = line - 1
    if "#" in lines[at]:
        return True
    at -= 1
    while at >= 0 and re.match(r"\s*(from \S+ import|import )", lines[at]) and "#" not in lines[at]:
        at -= 1
    return at >= 0 and "#" in lines[at]


def test_imports_inside_functions_are_few_and_say_why():
    local = [imp for imp in IMPORTS if imp.local]
    assert len(local) <= MAX_FUNCTION_LOCAL_IMPORTS, local
    assert [imp for imp in local if not has_reason(imp.path, imp.line)] == []


@pytest.mark.parametrize("package", sorted(set(ALLOWED) - set(BASE)) + ["progan.runtime"])
def test_each_package_says_what_it_may_import(package):
    path = MODULES[package]
    text = ast.get_docstring(ast.parse(path.read_text())) or ""
    said = re.search(r"May import:(.*?)(?:\n\n|$)", text, re.S)
    assert said, f"{path.relative_to(REPO)}: its docstring has no 'May import:' paragraph"
    assert set(re.findall(r"progan\.\w+", said.group(1))) == ALLOWED[package]


def test_architecture_page_states_the_same_rule():
    page = (REPO / "docs" / "architecture.md").read_text()
    rows = {}
    for cells in re.findall(r"^\| `([^`]+)` \|[^\n]*\| ([^|\n]+) \|$", page, re.M):
        rows[cells[0].rstrip("/").removesuffix(".py").replace("/", ".")] = cells[1].strip()
    above: set[str] = set()
    for part in ["progan.runtime", "progan.shapes", "progan.nets", "progan.data", "progan.generator",
                 "progan.metrics", "progan.train"]:
        said = rows[part]
        names = (set(above) if said == "everything above" else
                 set() if said == "nothing of progan" else {f"progan.{n.strip()}" for n in said.split(",")})
        assert names == ALLOWED[part], part
        above.add(part)
    said = re.sub(r"\s*\(.*?\)", "", rows["data_prep"])
    assert {f"progan.{n.strip()}" for n in said.split(",")} == ALLOWED["data_prep"]


@pytest.mark.parametrize("module", ["progan", "progan.metrics", "progan.data.format", "progan.data.reader",
                                    "progan.data.writer", "progan.train.config", "data_prep.decode",
                                    "data_prep.build"])
def test_cheap_entry_points_do_not_import_torch(module):
    """`import progan` and data_prep's workers stay light: torch costs a second or more to import."""
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'scipy', 'accelerate') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
