"""Hugging Face transformers 5 models (tiny configs): captured exactly through torch.export, pruned."""
from __future__ import annotations

import pytest
import torch
from hf_models import NAMES, make
from torch.utils import _pytree as pytree

from fxmeta.capture import from_program
from fxmeta.keys import UNMAPPED_OPS

pytest.importorskip("transformers", minversion="5")
torch.set_num_threads(1)


@pytest.mark.parametrize("name", NAMES)
def test_programs_are_captured_exactly_with_every_op_in_the_table(name):
    model, x = make(name)
    program = torch.export.export(model, (x,))
    gm = from_program(program, x)  # checks bit for bit itself
    assert gm.meta[UNMAPPED_OPS] == {}
    with torch.no_grad():
        want, got = model(x), gm(x)
    assert type(got) is type(want)  # the ModelOutput, not the dict fx would write
    assert all(torch.equal(a, b) for a, b in zip(pytree.tree_leaves(want), pytree.tree_leaves(got)))
    assert {n for n, _ in gm.named_parameters()} <= {n for n, _ in model.named_parameters(remove_duplicate=False)}
