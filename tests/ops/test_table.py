"""The table of op families: every family has a handler, and a new family is one registration away."""
import warnings

import pytest
import torch
from torch import nn

import relprop
from relprop.ops import table


def test_every_family_named_in_the_table_has_a_handler_and_a_deeplift_kind():
    families = set(table.FAMILIES.values()) - {"quiet"}
    assert families <= set(table.HANDLERS)
    assert all(entry.deeplift in table.DEEPLIFT_KINDS for entry in table.HANDLERS.values())


def test_register_refuses_an_unknown_deeplift_kind():
    with pytest.raises(ValueError, match="deeplift must be one of"):
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

    from relprop.engine import intercept

    table.FAMILIES[name] = "test_erfinv"
    table.register("test_erfinv", deeplift="path")(passing)
    intercept._CLASSIFIED.clear()  # classify() remembers what it has seen
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
        intercept._CLASSIFIED.clear()
