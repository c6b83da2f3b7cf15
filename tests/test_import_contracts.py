"""The shape of modules/ (README.md, Layout) is checked, not hoped for: the layers import only downwards,
the UI and the API reach the device only through the service, and no module imports itself in a circle."""

import re
import subprocess
import sys
from pathlib import Path

import grimp

from conftest import ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def test_layer_contracts_hold():
    """.importlinter: app > service > pipeline > postprocess > accel > models > io > sampling, and the
    app layer never imports the pipeline, the models, the accelerators, the queue or the model manager."""
    run = subprocess.run([str(LINT_IMPORTS), "--config", str(ROOT / ".importlinter"), "--no-cache"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "BROKEN" not in run.stdout and "KEPT" in run.stdout


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
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
                    components.append(sorted(component))
    return components


def test_no_module_imports_itself_in_a_circle():
    graph = grimp.build_graph("modules", exclude_type_checking_imports=True, cache_dir=None)
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for name in ("pkg.a", "pkg.b", "pkg.c", "pkg.d"):
        graph.add_module(name)
    graph.add_import(importer="pkg.a", imported="pkg.b")
    graph.add_import(importer="pkg.b", imported="pkg.c")
    graph.add_import(importer="pkg.c", imported="pkg.a")
    graph.add_import(importer="pkg.c", imported="pkg.d")
    assert _cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]


def _readme_tree() -> dict[str, str]:
    """The Layout tree in README.md: package -> the text that describes it."""
    lines = (ROOT / "README.md").read_text().split("      modules/\n", 1)[1].split("\n- ", 1)[0].splitlines()
    tree: dict[str, str] = {}
    package = None
    for line in lines:
        head = line[8:].split(" ", 1)[0] if line.startswith("        ") and not line.startswith("         ") else ""
        if head.endswith("/"):
            package = head.rstrip("/")
            tree[package] = line
        elif package is not None:
            tree[package] += " " + line.strip()
    return tree


def test_readme_layout_names_every_package_and_module():
    tree = _readme_tree()
    packages = sorted(p.name for p in (ROOT / "modules").iterdir() if (p / "__init__.py").is_file())
    assert sorted(tree) == packages
    for package in packages:
        folder = ROOT / "modules" / package
        names = [p.stem for p in folder.glob("*.py") if p.stem != "__init__"]
        names += [f"{p.name}/" for p in folder.iterdir() if (p / "__init__.py").is_file()]
        words = re.split(r"[\s,;:()]+", tree[package])
        missing = [name for name in names if name not in words]
        assert not missing, f"README.md's Layout does not name modules/{package}/{missing}"
