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


# ---- fastrnn.cell_table: the Python side reads the table, and agrees with the C++ rule -----------------
def test_python_table_reads_core():
    from fastrnn import cell_table
    table = _core.cells()
    assert cell_table.CELLS == CELLS
    assert cell_table.CELL_ID == {name: e["id"] for name, e in table.items()}
    for name, info in cell_table.TABLE.items():
        e = table[name]
        assert (info.gates, info.gate_names, info.carries_cell_state, info.saved_per_unit) == \
            (e["gates"], e["gate_names"], e["has_cell_state"], e["saved_per_unit"])
        assert info.param_names == tuple(p["name"] for p in e["params"])
        assert cell_table.BY_TORCH_MODE[info.torch_mode] is info
    # the Python facts as torch.nn and the cell variants define them
    assert {n: i.torch_module for n, i in cell_table.TABLE.items()} == \
        {"rnn_tanh": "RNN", "rnn_relu": "RNN", "lstm": "LSTM", "gru": "GRU"}
    assert {k: v.name for k, v in cell_table.BY_NONLINEARITY.items()} == {"tanh": "rnn_tanh", "relu": "rnn_relu"}
    options = {n: (i.lstm_variants, i.reset_after_option, i.layer_norm_option) for n, i in cell_table.TABLE.items()}
    assert options == {"rnn_tanh": (False, False, False), "rnn_relu": (False, False, False),
                       "lstm": (True, False, True), "gru": (False, True, True)}


# every cell plain, and the LSTM with each combination of peephole and coupled
SHAPE_CASES = [(cell, False, False) for cell in CELLS] + [("lstm", True, False), ("lstm", False, True),
                                                          ("lstm", True, True)]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("cell, peephole, coupled", SHAPE_CASES)
def test_python_param_shapes_equal_core(cell, peephole, coupled, bidirectional, bias):
    """cell_table.param_shapes evaluates the table's rules (it also takes the sizes torch.nn accepts and
    _core refuses, like 0); where both apply it gives _core.param_shapes' shapes exactly."""
    from fastrnn import cell_table
    got = cell_table.param_shapes(cell, 5, 7, 3, bidirectional, bias, peephole, coupled)
    want = _core.param_shapes(_core.cells()[cell]["id"], 5, 7, 3, bidirectional, bias, peephole, coupled)
    assert got == tuple(tuple(tuple(s) for s in entry) for entry in want)
    G = cell_table.cell_info(cell).gates_with(coupled)
    assert cell_table.param_formulas(cell, 1, 2, bias, peephole, coupled)[:2] == (f"({G}*H, 2*H) = ", f"({G}*H, H) = ")
