"""ops/signatures.py: what a torch call is, read from its name and arguments; and the layering it makes possible
(op families import nothing from the engine)."""
import ast
import pathlib

import torch
import torch.nn.functional as F

import relprop.ops
from relprop.ops.signatures import bind, classify, out_of_place, plain_variant, writes_first_argument

OPS = pathlib.Path(relprop.ops.__file__).parent


def relprop_imports(source: str, package: tuple[str, ...]) -> set[str]:
    """The relprop modules some source imports (``relprop.engine.intercept``), relative imports resolved from
    ``package`` (``("relprop", "ops")``)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else ()
            module = ".".join((*base, *(node.module.split(".") if node.module else ())))
            found.update([module] if node.module else [f"{module}.{alias.name}" for alias in node.names])
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.split(".")[0] == "relprop"}


def test_no_op_family_imports_the_engine():
    engine_imports = {path.name: sorted(name for name in relprop_imports(path.read_text(), ("relprop", "ops"))
                                        if name.startswith("relprop.engine"))
                      for path in sorted(OPS.glob("*.py"))}
    assert {name: found for name, found in engine_imports.items() if found} == {}


def test_the_import_reader_finds_relative_and_absolute_imports_of_the_engine():
    source = ("from ..engine.intercept import bind\nfrom .. import engine\nfrom . import table\n"
              "import relprop.engine.session\nimport torch\n")
    assert relprop_imports(source, ("relprop", "ops")) == {
        "relprop.engine.intercept", "relprop.engine", "relprop.ops.table", "relprop.engine.session"}


def test_classify_names_a_torch_function_and_its_family():
    assert classify(F.conv2d) == ("torch.nn.functional.conv2d", "conv")
    assert classify(torch.Tensor.mul_)[1] == "product"
    assert classify(torch.erfinv) == ("torch.erfinv", None)  # no rule known


def test_bind_reads_arguments_by_name_with_defaults_for_the_rest():
    bound = bind(("input", "weight", "bias", "stride"), ("x", "w"), {"stride": 2})
    assert bound == {"input": "x", "weight": "w", "bias": None, "stride": 2}


def test_plain_variant_is_the_torch_function_an_in_place_op_stands_for():
    assert plain_variant("torch.Tensor.mul_") is torch.mul
    assert plain_variant("torch.Tensor.__imul__") is torch.mul
    assert plain_variant("torch.Tensor.__mul__") is None
    assert plain_variant("torch.mul") is None


def test_writes_first_argument_sees_trailing_underscores_operators_and_the_inplace_flag():
    x = torch.zeros(2)
    assert writes_first_argument(torch.Tensor.add_, "torch.Tensor.add_", (x, 1), {})
    assert writes_first_argument(torch.Tensor.__iadd__, "torch.Tensor.__iadd__", (x, 1), {})
    assert writes_first_argument(F.relu, "torch.nn.functional.relu", (x,), {"inplace": True})
    assert writes_first_argument(F.relu, "torch.nn.functional.relu", (x, True), {})
    assert not writes_first_argument(F.relu, "torch.nn.functional.relu", (x,), {})
    assert not writes_first_argument(torch.add, "torch.add", (x, 1), {})


def test_out_of_place_computes_the_op_and_leaves_its_input_unchanged():
    torch.manual_seed(0)
    x = torch.randn(5)
    before = x.clone()
    relu = out_of_place(F.relu, "torch.nn.functional.relu", (x, True), {})
    assert torch.allclose(relu(x), before.clamp(min=0))
    scaled = out_of_place(torch.Tensor.mul_, "torch.Tensor.mul_", (x, 3.0), {})
    assert torch.allclose(scaled(x), before * 3.0)
    assert torch.allclose(x, before)
