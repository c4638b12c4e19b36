"""Every public name has a docstring, and every parameter of a public function or method is in its Google-style
``Args:`` section (the style the reference, mkdocstrings with ``docstring_style: google``, reads).

Public means: the modules in ``PUBLIC_MODULES`` (the package, its subpackages and the submodules the guides import
from); in each, the names of its ``__all__``, or where it has none the classes and functions it defines without a
leading underscore; of each public class, its methods, properties and ``__call__`` that relprop defines (on the
class or a relprop base it inherits from). A class's constructor parameters are documented in the class docstring
(``Args:`` or, for data classes, ``Attributes:``) or in ``__init__``'s. ``*args`` and ``**kwargs`` need no entry.
A documented parameter the signature does not have is also a problem (the strict site build fails on it).
Examples written as doctests (``>>>``) in these docstrings run here too.
"""
import dataclasses
import doctest
import importlib
import inspect
import logging
import pathlib
import re
import types

import pytest

# griffe parses the docstrings as the reference does; it comes with the docs extra (mkdocstrings-python)
griffe = pytest.importorskip("griffe", reason="the docs extra (pip install -e .[docs]) parses the docstrings")

ROOT = pathlib.Path(__file__).resolve().parent.parent

PUBLIC_MODULES = [
    "relprop", "relprop.explanation", "relprop.comparison", "relprop.rules", "relprop.composites",
    "relprop.canonizers", "relprop.neuralize", "relprop.gnn", "relprop.language", "relprop.memory",
    "relprop.outputs", "relprop.progress",
    "relprop.attribution", "relprop.attribution.registry", "relprop.attribution.lrp", "relprop.attribution.targets",
    "relprop.datasets", "relprop.datasets.sources", "relprop.datasets.images",
    "relprop.analysis", "relprop.analysis.spray", "relprop.analysis.pages", "relprop.analysis.virelay",
    "relprop.analysis.apart",
    "relprop.evaluate",
    "relprop.concepts", "relprop.concepts.pages",
    "relprop.correct", "relprop.correct.cav", "relprop.correct.clarc", "relprop.correct.finetune",
    "relprop.correct.metrics",
    "relprop.viz", "relprop.viz.colormaps",
    "relprop.demo", "relprop.demo.watermark", "relprop.tour.shortcut", "relprop.tour.showcase",
]

# methods named by a convention of the base class they override, whose meaning that base documents
CONVENTIONAL = {"extra_repr"}
PARAMETER_SECTIONS = {"parameters", "other_parameters"}
FIELD_SECTIONS = {"parameters", "other_parameters", "attributes"}


def documented(docstring: str | None, sections: set[str]) -> set[str] | None:
    """Names in the given sections of a Google-style docstring (None when there is no docstring)."""
    if not docstring:
        return None
    logging.getLogger("griffe").setLevel(logging.ERROR)  # a malformed section shows up as undocumented names
    parsed = griffe.Docstring(inspect.cleandoc(docstring), parser="google").parse()
    return {item.name.lstrip("*") for section in parsed if section.kind.value.replace(" ", "_") in sections
            for item in section.value}


def parameters(function) -> list[str] | None:
    """The parameters a caller passes by name (not self/cls, *args or **kwargs); None if there is no signature."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return None
    return [name for name, parameter in signature.parameters.items()
            if name not in ("self", "cls")
            and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)]


def own_docstring(obj) -> str | None:
    """The docstring written for obj itself: not inherited, not the one dataclasses or NamedTuple generate."""
    text = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
    if inspect.isclass(obj) and text and re.match(rf"{re.escape(obj.__name__)}\(.*\)$", text.strip(), re.DOTALL):
        return None
    return text if text and text.strip() else None


def check_function(name: str, function) -> list[str]:
    """Problems of one function or method: no docstring, parameters missing from Args or not in the signature."""
    doc = own_docstring(function)
    if doc is None:
        return [f"{name}: no docstring"]
    names = parameters(function)
    if names is None:
        return []
    written = documented(doc, PARAMETER_SECTIONS)
    problems = [f"{name}: parameter {parameter!r} not in Args" for parameter in names if parameter not in written]
    signature = inspect.signature(function).parameters
    problems += [f"{name}: Args names {parameter!r}, which is not a parameter" for parameter in sorted(written)
                 if parameter not in signature]
    return problems


def constructor(cls):
    """The parameters of cls's constructor when relprop defines it (None when it is torch's or Python's)."""
    if hasattr(cls, "_fields") and issubclass(cls, tuple):  # NamedTuple
        return list(cls._fields)
    for base in cls.__mro__:
        if "__init__" in base.__dict__:
            if not base.__module__.startswith("relprop"):
                return None
            return parameters(base.__dict__["__init__"])
    return None


def relprop_members(cls):
    """(name, member) of the public methods and properties relprop defines on cls or the relprop bases it has."""
    seen = {}
    for base in reversed(cls.__mro__):
        if not base.__module__.startswith("relprop"):
            continue
        for key, value in base.__dict__.items():
            if (key.startswith("_") and key != "__call__") or key in CONVENTIONAL:
                continue
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            if inspect.isfunction(value) or isinstance(value, property):
                seen[key] = value
    return seen.items()


def inherits_docstring(cls, key: str, member) -> bool:
    """Whether member, written without a docstring, overrides a documented relprop method of the same signature
    (what it does is said once, on the base, as inspect.getdoc and the reference read it)."""
    function = member.fget if isinstance(member, property) else member
    if (function.__doc__ or "").strip():
        return False
    owner = next(base for base in cls.__mro__ if key in base.__dict__)  # the class that defines member
    for base in cls.__mro__[cls.__mro__.index(owner) + 1:]:
        original = base.__dict__.get(key)
        if original is None or not base.__module__.startswith("relprop"):
            continue
        original = original.fget if isinstance(original, property) else getattr(original, "__func__", original)
        return bool((original.__doc__ or "").strip()) and (
            isinstance(member, property) or parameters(original) == parameters(function))
    return False


def check_class(name: str, cls, seen: set | None = None) -> list[str]:
    """Problems of one class: its docstring, its constructor's parameters, and its public members (those not in
    seen, the ids of members already checked on another class; seen gets this class's)."""
    seen = set() if seen is None else seen
    doc = own_docstring(cls)
    if doc is None:
        problems = [f"{name}: no docstring"]
    else:
        init = cls.__dict__.get("__init__")
        written = documented(doc, FIELD_SECTIONS if dataclasses.is_dataclass(cls) or hasattr(cls, "_fields")
                             else PARAMETER_SECTIONS)
        if init is not None and inspect.isfunction(init) and init.__doc__:
            written |= documented(init.__doc__, PARAMETER_SECTIONS)
        problems = [f"{name}: constructor parameter {parameter!r} not in Args" for parameter in constructor(cls) or []
                    if parameter not in written]
    for key, member in relprop_members(cls):
        if id(member) in seen or inherits_docstring(cls, key, member):
            continue
        seen.add(id(member))
        if isinstance(member, property):
            if not (member.fget.__doc__ or "").strip():
                problems.append(f"{name}.{key}: no docstring")
        else:
            problems += check_function(f"{name}.{key}", member)
    return problems


def public_names(module) -> list[tuple[str, object]]:
    """(name, object) of a module's public functions and classes."""
    if hasattr(module, "__all__"):
        found = [(name, getattr(module, name)) for name in module.__all__]
    else:
        found = [(name, value) for name, value in vars(module).items()
                 if not name.startswith("_") and getattr(value, "__module__", None) == module.__name__]
    return [(name, value) for name, value in found if inspect.isclass(value) or inspect.isfunction(value)]


def check_modules(names: list[str]) -> tuple[list[str], int]:
    """Problems of the given modules and everything public in them, and how many names were checked (each once)."""
    problems, seen, members, counted, count = [], set(), set(), set(), 0
    for module_name in names:
        module = importlib.import_module(module_name)
        count += 1
        if own_docstring(module) is None:
            problems.append(f"{module_name}: no module docstring")
        for name, value in public_names(module):
            if id(value) in seen:
                continue
            seen.add(id(value))
            own = {id(member) for _, member in relprop_members(value)} if inspect.isclass(value) else set()
            count += 1 + len(own - counted)
            counted |= own
            full = f"{module_name}.{name}"
            problems += check_class(full, value, members) if inspect.isclass(value) else check_function(full, value)
    return problems, count


# -- the checker finds what it should ------------------------------------------------------------------------------

def _half_documented(alpha, beta, *rest, gamma=1, **options):
    """Add things.

    Args:
        alpha: the first.
        gamma: a keyword.
    """


def _fully_documented(alpha, beta, *rest, **options):
    """Add things.

    Args:
        alpha: the first.
        beta: the second.
    """


def _over_documented(alpha):
    """Add things.

    Args:
        alpha: the first.
        delta: not a parameter.
    """


def test_the_checker_names_a_parameter_missing_from_args_and_ignores_star_args():
    assert check_function("half", _half_documented) == ["half: parameter 'beta' not in Args"]
    assert check_function("full", _fully_documented) == []


def test_the_checker_names_a_documented_parameter_the_signature_lacks():
    assert check_function("over", _over_documented) == ["over: Args names 'delta', which is not a parameter"]


def test_the_checker_names_classes_methods_and_modules_without_docstrings():
    module = types.ModuleType("relprop_fake")

    class Thing:
        def __init__(self, size):
            self.size = size

        def grow(self, by):
            """Grow.

            Args:
                by: how much.
            """

        def shrink(self):
            pass

        @property
        def area(self):
            return self.size ** 2

    Thing.__module__ = "relprop_fake"
    module.Thing, module.__all__ = Thing, ["Thing"]
    assert check_class("Thing", Thing) == ["Thing: no docstring", "Thing.shrink: no docstring",
                                           "Thing.area: no docstring"]
    Thing.__doc__ = "A thing.\n\nArgs:\n    colour: not it.\n"
    assert check_class("Thing", Thing)[0] == "Thing: constructor parameter 'size' not in Args"
    import sys
    sys.modules["relprop_fake"] = module
    try:
        problems, count = check_modules(["relprop_fake"])
    finally:
        del sys.modules["relprop_fake"]
    assert problems[0] == "relprop_fake: no module docstring" and count == 5  # module, class, 3 members


def test_a_dataclass_documents_its_fields_under_attributes_and_its_generated_docstring_does_not_count():
    @dataclasses.dataclass
    class Point:
        x: float
        y: float

    Point.__module__ = "relprop_fake"
    assert check_class("Point", Point) == ["Point: no docstring"]
    Point.__doc__ = "A point.\n\nAttributes:\n    x: across.\n"
    assert check_class("Point", Point) == ["Point: constructor parameter 'y' not in Args"]


# -- the package ---------------------------------------------------------------------------------------------------

def test_every_public_name_has_a_docstring_with_its_parameters():
    problems, count = check_modules(PUBLIC_MODULES)
    assert count > 300  # the walk reaches the package (a broken walk would check nothing and pass)
    assert not problems, f"{len(problems)} problems in {count} public names:\n" + "\n".join(problems)


def rendered_module(identifier: str) -> str:
    """The module a ``::: identifier`` of a reference page documents: the module itself, or an object's module."""
    parts = identifier.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            value = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            value = getattr(value, part)
        return value.__name__ if inspect.ismodule(value) else value.__module__
    raise AssertionError(f"::: {identifier} names nothing importable")


def test_every_public_module_has_a_reference_page_in_the_site_navigation():
    pages = {page.name: page.read_text() for page in (ROOT / "docs" / "reference").glob("*.md")}
    identifiers = {match for text in pages.values() for match in re.findall(r"^::: *([\w.]+)", text, re.MULTILINE)}
    rendered = identifiers | {rendered_module(identifier) for identifier in identifiers}
    covered = {name for name in PUBLIC_MODULES
               if name in rendered or any(member.startswith(name + ".") for member in rendered)}
    assert covered == set(PUBLIC_MODULES), sorted(set(PUBLIC_MODULES) - covered)
    nav = (ROOT / "mkdocs.yml").read_text()
    assert all(f"reference/{page}" in nav for page in pages), sorted(page for page in pages
                                                                       if f"reference/{page}" not in nav)


def _examples():
    """The doctests of the public modules and names, each docstring once (re-exported names are found twice)."""
    finder, found = doctest.DocTestFinder(exclude_empty=True), {}
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for value in [module] + [value for _, value in public_names(module)]:
            for test in finder.find(value, getattr(value, "__name__", module_name), module=False, globs={}):
                if test.examples:
                    found.setdefault(test.docstring, test)
    return list(found.values())


def test_the_examples_are_found_where_they_are_written():
    names = {test.name.rsplit(".", 1)[-1] for test in _examples()}
    assert {"explain", "region_perturbation", "conditional", "get", "heatmap"} <= names, sorted(names)


@pytest.mark.parametrize("example", _examples(), ids=lambda test: test.name)
def test_the_examples_in_the_docstrings_run_and_print_what_they_show(example):
    import torch

    torch.manual_seed(0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    result = runner.run(example)
    assert result.failed == 0, f"{example.name}: {result.failed} of {result.attempted} examples failed"
