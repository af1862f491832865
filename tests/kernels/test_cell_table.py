"""The cell table that `_core.cells()` exports (what each C++ cell spec in csrc/cells/ declares) agrees
with what Python knows of the cells today (fastrnn.types.GATES / CELLS, the LSTM's c0/c_n,
init_weights' shapes), and `_core.param_shapes` (the C++ weight rule) with init_weights, so that
Python can read the cells from the table instead of its own copies.
"""
import itertools

import numpy as np
import pytest

import fastrnn
from fastrnn import _core
from fastrnn.types import CELLS, GATES


def test_table_names_and_ids_follow_cells():
    table = _core.cells()
    assert sorted(table) == sorted(CELLS)
    assert [name for name, _ in sorted(table.items(), key=lambda kv: kv[1]["id"])] == list(CELLS)


@pytest.mark.parametrize("cell", CELLS)
def test_table_entry_matches_python(cell):
    e = _core.cells()[cell]
    assert e["gates"] == GATES[cell]
    assert len(e["gate_names"]) == GATES[cell] and len(set(e["gate_names"])) == GATES[cell]
    assert e["states"][0] == ("h", "H")
    assert e["has_cell_state"] == (cell == "lstm") == (len(e["states"]) == 2)
    assert len(e["saved_names"]) == e["saved_per_unit"]
    assert [p["name"] for p in e["params"]] == ["w_ih", "w_hh", "b_ih", "b_hh"]
    assert [p["shape"] for p in e["params"]] == [("G*H", "I"), ("G*H", "H"), ("G*H",), ("G*H",)]
    assert [p["bias"] for p in e["params"]] == [False, False, True, True]
    assert e["separate_hidden_grad"] == (cell == "gru")


def test_gate_orders_are_pytorchs():
    table = _core.cells()
    assert table["lstm"]["gate_names"] == ("i", "f", "g", "o")
    assert table["gru"]["gate_names"] == ("r", "z", "n")


def test_reserve_size_follows_the_table():
    """A training forward's reserve per layer: the outputs [T, B, D*H], then per direction the saved
    slots [T, B, S*H] and, for cells with a cell state, c [T, B, H]."""
    T, B, I, H, L = 3, 2, 5, 7, 2
    for cell, bi in itertools.product(CELLS, (False, True)):
        e, D = _core.cells()[cell], 2 if bi else 1
        per_dir = T * B * H * (e["saved_per_unit"] + (1 if e["has_cell_state"] else 0))
        assert _core.reserve_size(e["id"], T, B, I, H, L, bi) == L * (T * B * D * H + D * per_dir)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("cell", CELLS)
def test_param_shapes_match_init_weights(cell, bidirectional, bias):
    w = fastrnn.init_weights(cell, 5, 7, num_layers=3, bidirectional=bidirectional, bias=bias, dtype=np.float32)
    got = _core.param_shapes(_core.cells()[cell]["id"], 5, 7, 3, bidirectional, bias)
    assert [tuple(a.shape for a in layer) for layer in w] == [tuple(s) for s in got]
