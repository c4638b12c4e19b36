"""engine/intercept.py: OpMode, the base of the modes that route a model's torch calls."""
import ast
import pathlib

import torch

import relprop
from relprop.engine import OpMode


class Recording(OpMode):
    """Doubles every add it is handed, and records what it was handed."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def op(self, func, name, family, args, kwargs):
        self.seen.append((name, family, dict(kwargs)))
        out = func(*args, **kwargs)
        return out * 2 if name == "torch.add" else out


def test_quiet_calls_run_as_they_are_and_every_other_call_reaches_op_named_with_its_family():
    torch.manual_seed(0)
    x = torch.randn(2, 3)
    mode = Recording()
    with mode:
        shape, size = x.shape, x.size(1)  # quiet: shape and attribute reads
        doubled = torch.add(x, 1.0, alpha=2.0)
    assert (tuple(shape), size) == ((2, 3), 3)
    assert mode.seen == [("torch.add", "gradient", {"alpha": 2.0})]
    torch.testing.assert_close(doubled, 2 * (x + 2.0))


class Counting(OpMode):
    """Counts the calls it is handed."""

    sees_quiet = True

    def __init__(self):
        super().__init__()
        self.seen = []

    def op(self, func, name, family, args, kwargs):
        self.seen.append((name, family))
        return func(*args, **kwargs)


def test_a_mode_that_sees_quiet_calls_gets_them_named_with_the_quiet_family():
    x = torch.randn(2, 3)
    mode = Counting()
    with mode:
        x.size(1)
        x.new_zeros(2)
    assert mode.seen == [("torch.Tensor.size", "quiet"), ("torch.Tensor.new_zeros", "quiet")]


def test_in_place_calls_are_told_from_their_plain_forms():
    x = torch.randn(3)
    relu, functional = torch.nn.functional.relu, "torch.nn.functional.relu"
    assert OpMode.in_place(torch.Tensor.relu_, "torch.Tensor.relu_", (x,), {})
    assert OpMode.in_place(torch.Tensor.__iadd__, "torch.Tensor.__iadd__", (x, 1.0), {})
    assert OpMode.in_place(relu, functional, (x, True), {})
    assert OpMode.in_place(relu, functional, (x,), {"inplace": True})
    assert not OpMode.in_place(relu, functional, (x,), {}) and not OpMode.in_place(relu, functional, (x, False), {})
    assert not OpMode.in_place(torch.relu, "torch.relu", (x,), {})


SOURCE = pathlib.Path(relprop.__file__).parent


def test_every_torch_function_mode_of_the_package_derives_from_op_mode():
    # neuralize's two modes are the exception: neuralize sits below ops (ops/clusters.py rules its modules), so it
    # cannot import the engine
    plain = {}
    for path in SOURCE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(ast.unparse(base).endswith("TorchFunctionMode")
                                                      for base in node.bases):
                plain.setdefault(str(path.relative_to(SOURCE)), []).append(node.name)
    assert plain == {"engine/intercept.py": ["OpMode"], "neuralize.py": ["_Trace", "_Swap"]}


def test_ops_import_nothing_from_the_engine():
    found = []
    for path in (SOURCE / "ops").rglob("*.py"):
        package = ["relprop", "ops"]  # ops has no subpackages
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package[:len(package) - node.level + 1] if node.level else []
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
                names = [f"{target}.{alias.name}" for alias in node.names]
                if any(name.startswith("relprop.engine") for name in [target, *names]):
                    found.append((path.name, target))
            elif isinstance(node, ast.Import) and any(alias.name.startswith("relprop.engine") for alias in node.names):
                found.append((path.name, node.names[0].name))
    assert found == []
