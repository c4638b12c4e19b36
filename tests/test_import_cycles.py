"""The package's modules import each other one way: no chain of imports leads from a module back to itself, at
import time or inside a function (imports under ``if TYPE_CHECKING:`` are for annotations only and are not counted;
packages' ``__init__`` files re-export their modules and are not counted either)."""
import ast
import pathlib

import relprop

ROOT = pathlib.Path(relprop.__file__).parent


def module_name(path: pathlib.Path, root: pathlib.Path = ROOT) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: pathlib.Path, modules: set[str], root: pathlib.Path = ROOT) -> set[str]:
    """The package's modules that a file imports (a name imported from a package counts when it is a module)."""
    name = module_name(path, root)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    tree = ast.parse(path.read_text())
    skipped = {id(node) for top in ast.walk(tree)
               if isinstance(top, ast.If) and "TYPE_CHECKING" in ast.unparse(top.test)
               for statement in top.body for node in ast.walk(statement)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):  # import relprop.x.y
            found.update(alias.name for alias in node.names if alias.name in modules and alias.name != name)
        if not isinstance(node, ast.ImportFrom):
            continue
        base = package[:len(package) - node.level + 1] if node.level else []
        target = ".".join([*base, *(node.module.split(".") if node.module else [])])
        found.update(candidate for candidate in [target, *(f"{target}.{alias.name}" for alias in node.names)]
                     if candidate in modules and candidate != name)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, without recursion): every
    module of one can reach every other, so each is one or more import cycles."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph[successor]))))
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            else:
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


def import_graph(root: pathlib.Path = ROOT) -> dict[str, set[str]]:
    """Module -> the modules it imports, among the package's modules that are not a package's __init__."""
    paths = {module_name(path, root): path for path in root.rglob("*.py")}
    plain = {name for name, path in paths.items() if path.name != "__init__.py"}
    return {name: imported(paths[name], set(paths), root) & plain for name in plain}


def test_no_chain_of_imports_leads_back_to_its_module():
    graph = import_graph()
    assert len(graph) > 80 and sum(map(len, graph.values())) > 250  # the package is read (less its __init__s)
    found = cycles(graph)
    assert not found, "\n".join(" <-> ".join(component) + ": " + "; ".join(
        f"{a} -> {', '.join(sorted(graph[a] & set(component)))}" for a in component) for component in found)


def test_the_demo_assets_import_nothing_above_them_and_the_tour_drives_the_tools_from_above():
    graph = import_graph()
    assets = {name for name in graph if name == "relprop.demo" or name.startswith("relprop.demo.")}
    assert {"relprop.demo.model", "relprop.demo.shapes", "relprop.demo.watermark"} <= assets
    for name in assets:  # loading and the data-set sources read the assets: nothing in them may reach up
        assert {imported for imported in graph[name] if imported not in assets} == set(), name
    tour = {name for name in graph if name.startswith("relprop.tour.")}
    runners = {name for name in graph if graph[name] & tour} - tour
    assert runners and all(name.split(".")[:2] == ["relprop", "cli"] for name in runners), runners  # the CLI only


def test_the_checker_finds_a_pair_and_ignores_annotation_only_imports(tmp_path):
    package = tmp_path / "relprop"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from .b import g\n")
    (package / "b.py").write_text("from . import a\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import x\n")
    modules = {"relprop", "relprop.a", "relprop.b", "relprop.c"}
    assert imported(package / "a.py", modules, package) == {"relprop.b"}
    assert imported(package / "b.py", modules, package) == {"relprop", "relprop.a"}  # the package itself and a
    assert imported(package / "c.py", modules, package) == set()
    assert cycles(import_graph(package)) == [["relprop.a", "relprop.b"]]


def test_the_checker_finds_a_cycle_through_three_modules_and_plain_imports(tmp_path):
    package = tmp_path / "relprop"
    (package / "inner").mkdir(parents=True)
    (package / "__init__.py").write_text("from . import a\n")  # a package's __init__ is no link of a cycle
    (package / "inner" / "__init__.py").write_text("")
    (package / "a.py").write_text("from .inner.b import g\n")
    (package / "inner" / "b.py").write_text("def g():\n    import relprop.inner.c\n")
    (package / "inner" / "c.py").write_text("from ..a import f\n")
    (package / "d.py").write_text("from .a import f\n")  # imports into the cycle, not part of it
    assert cycles(import_graph(package)) == [["relprop.a", "relprop.inner.b", "relprop.inner.c"]]
    (package / "inner" / "c.py").write_text("")
    assert cycles(import_graph(package)) == []
