"""The table of op families: every family has a handler, and a new family is one registration away."""
import warnings

import pytest
import torch
from torch import nn

import relprop
from relprop.ops import table


def test_every_family_named_in_the_table_has_an_lrp_and_a_deeplift_handler():
    families = set(table.FAMILIES.values()) - {"quiet"}
    assert families <= set(table.HANDLERS)
    assert all(callable(entry.lrp) and callable(entry.deeplift) for entry in table.HANDLERS.values())


def test_each_family_file_owns_its_deeplift_handler():
    from relprop.ops import reference

    owners = {family: entry.deeplift.__module__.rsplit(".", 1)[-1] for family, entry in table.HANDLERS.items()
              if entry.deeplift not in (reference.exact, reference.path_averaged)}
    assert owners["activation"] == owners["rectifier"] == owners["pointwise"] == "elementwise"
    assert owners["selection"] == "plain" and owners["product"] == "products" and owners["conv"] == "linear"
    assert owners["batch_norm"] == "norms" and owners["multi_head_attention"] == "attention"


def test_register_refuses_a_deeplift_handler_that_is_not_callable():
    with pytest.raises(TypeError, match="deeplift must be a DeepLift handler"):
        table.register("new_family", deeplift="magic")


class Erfinv(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        return torch.erfinv(torch.tanh(self.fc(x)) * 0.5).sum(1, keepdim=True)


def test_a_new_family_is_one_registration_and_the_engine_and_deeplift_use_it():
    name = "torch.erfinv"
    assert name not in table.FAMILIES
    seen = []

    def passing(ctx, func, op_name, args, kwargs):
        from relprop.ops.elementwise import pass_through

        seen.append(op_name)
        row = ctx.row(op_name, "Pass (test family)")
        out = pass_through(ctx.tap(args[0], row), lambda t: func(t, *args[1:], **kwargs))
        ctx.watch(out, row)
        return out

    from relprop.ops import signatures
    from relprop.ops import reference

    table.FAMILIES[name] = "test_erfinv"
    table.register("test_erfinv", deeplift=reference.path_averaged)(passing)
    signatures._CLASSIFIED.clear()  # classify() remembers what it has seen
    try:
        torch.manual_seed(0)
        model, x = Erfinv(), torch.randn(2, 3)
        report = relprop.LRP(model, "epsilon", strict=True).report(x)
        assert ("torch.erfinv", "", "Pass (test family)") in [(r.op, r.module, r.rule) for r in report]
        assert seen
        with warnings.catch_warnings():
            warnings.simplefilter("error", relprop.UnsupportedOpWarning)  # the family is known to DeepLift too
            relprop.attribution.DeepLift(model)(x, baseline=torch.randn_like(x))
    finally:
        del table.FAMILIES[name]
        del table.HANDLERS["test_erfinv"]
        signatures._CLASSIFIED.clear()
