"""The cell table on the Python side: what each cell is, read once from the C++ specs
(``_core.cells()``, csrc/cells/: gates, states, saved slots, the parameters' shape rules), plus the few
facts only Python needs (which keyword options a cell takes, which torch.nn module and mode it is).
This is the one module in python/fastrnn that names cells: the NumPy API, the op schema, the torch
modules, the reference and the benchmark ask it (``cell_info(cell).carries_cell_state``,
``.gates``, ``param_shapes(...)``) instead of comparing names. A new cell's Python bits start with
its row in ``_PYTHON_FACTS`` below (tests/kernels/test_cell_table.py checks that the two agree).
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Tuple

from ._loader import _core

# The cells' names, for the few places that pick one cell by design (lstm_forward, a benchmark's
# default cells, the torch modules' classes); everything about a cell is read from its CellInfo.
RNN_TANH, RNN_RELU, LSTM, GRU = "rnn_tanh", "rnn_relu", "lstm", "gru"


@dataclass(frozen=True)
class _Facts:
    """What Python knows of a cell that its C++ spec does not declare."""
    torch_mode: str  # torch.nn.RNNBase's mode string ("LSTM", "RNN_TANH", ...)
    torch_module: str  # the torch.nn class: "RNN", "LSTM", "GRU" (and "<it>Cell")
    nonlinearity: Optional[str]  # torch.nn.RNN's nonlinearity keyword, None for the others
    lstm_variants: bool  # takes peephole, coupled, cell_clip
    reset_after_option: bool  # takes reset_after=False, the reset-before variant
    layer_norm_option: bool  # takes layer_norm=True


_PYTHON_FACTS = {
    RNN_TANH: _Facts("RNN_TANH", "RNN", "tanh", False, False, False),
    RNN_RELU: _Facts("RNN_RELU", "RNN", "relu", False, False, False),
    LSTM: _Facts("LSTM", "LSTM", None, True, False, True),
    GRU: _Facts("GRU", "GRU", None, False, True, True),
}


@dataclass(frozen=True)
class CellInfo:
    """One cell of the table: its C++ spec's declarations and its Python facts."""
    name: str
    id: int  # the `cell` argument of _core's entry points
    gates: int  # gate blocks stacked in W_ih / W_hh (rows = gates * H)
    gate_names: Tuple[str, ...]
    states: Tuple[Tuple[str, str], ...]  # (name, width rule), h first
    carries_cell_state: bool  # a second state c (c0 / c_n) besides h
    saved_per_unit: int
    saved_names: Tuple[str, ...]
    param_names: Tuple[str, ...]  # per layer and direction, in the weights tuples' order
    param_rules: Tuple[Tuple[Tuple[str, ...], bool], ...]  # (shape rule, is a bias) per parameter
    separate_hidden_grad: bool
    unit_shapes: Tuple[Tuple[int, int], Tuple[int, int]]  # (G, U) without / with coupled (_unit_shapes)
    # the Python facts (_Facts)
    torch_mode: str
    torch_module: str
    nonlinearity: Optional[str]
    lstm_variants: bool
    reset_after_option: bool
    layer_norm_option: bool

    def gates_with(self, coupled: bool = False) -> int:
        """Gate blocks with the cell options (the coupled LSTM drops its input gate, i = 1 - f)."""
        return self.unit_shapes[1 if coupled else 0][0]

    def peephole_rows(self, coupled: bool = False) -> int:
        """Rows U of the peepholes w_ch [U, H] (the gates that see c: i, f, o; coupled f, o)."""
        return self.unit_shapes[1 if coupled else 0][1]


def _unit_shapes(cell_id: int, coupled: bool) -> Tuple[int, int]:
    """(G, U) as the C++ rule gives them: w_ih's rows and w_ch's rows at H = 1 (the LSTM variants'
    options for a cell without them: its plain G, and U = 0)."""
    try:
        entry = _core.param_shapes(cell_id, 1, 1, 1, False, False, True, coupled)[0]
        return entry[0][0], entry[-1][0]
    except ValueError:  # a cell that takes no peepholes
        return _core.param_shapes(cell_id, 1, 1, 1, False, False)[0][0][0], 0


def _read_table() -> Dict[str, CellInfo]:
    table = {}
    for name, e in sorted(_core.cells().items(), key=lambda kv: kv[1]["id"]):
        table[name] = CellInfo(name=name, id=e["id"], gates=e["gates"], gate_names=tuple(e["gate_names"]),
                               states=tuple(tuple(s) for s in e["states"]), carries_cell_state=e["has_cell_state"],
                               saved_per_unit=e["saved_per_unit"], saved_names=tuple(e["saved_names"]),
                               param_names=tuple(p["name"] for p in e["params"]),
                               param_rules=tuple((tuple(p["shape"]), p["bias"]) for p in e["params"]),
                               separate_hidden_grad=e["separate_hidden_grad"],
                               unit_shapes=(_unit_shapes(e["id"], False), _unit_shapes(e["id"], True)),
                               **asdict(_PYTHON_FACTS[name]))
    return table


TABLE: Dict[str, CellInfo] = _read_table()
assert set(TABLE) == set(_PYTHON_FACTS), "csrc/cells/ and fastrnn.cell_table._PYTHON_FACTS list different cells"

CELLS: Tuple[str, ...] = tuple(TABLE)  # in id order
CELL_ID: Dict[str, int] = {name: info.id for name, info in TABLE.items()}
BY_TORCH_MODE: Dict[str, CellInfo] = {info.torch_mode: info for info in TABLE.values()}
# torch.nn.RNN / RNNCell's nonlinearity keyword -> its cell
BY_NONLINEARITY: Dict[str, CellInfo] = {info.nonlinearity: info for info in TABLE.values() if info.nonlinearity}


def cell_info(cell: str) -> CellInfo:
    """The table's entry for ``cell`` (a name of CELLS; KeyError otherwise: callers validate first)."""
    return TABLE[cell]


def carries_cell_state(cell: str) -> bool:
    """Whether ``cell`` (a name of CELLS) has a cell state c besides h (c0, c_n, dcn, dc0)."""
    return TABLE[cell].carries_cell_state


@functools.lru_cache(maxsize=1024)
def param_formulas(cell: str, layer: int, num_directions: int, bias: bool, peephole: bool = False,
                   coupled: bool = False) -> Tuple[str, ...]:
    """The rules of param_shapes as the error messages show them, e.g. ``"(4*H, I) = "``, ``"(4*H, 2*H) = "``
    (a later layer's input), ``"(4*H,) = "``, ``"(3, H) = "`` (peepholes)."""
    info = TABLE[cell]
    G = info.gates_with(coupled)
    size = {"G*H": f"{G}*H", "I": "I" if layer == 0 else f"{num_directions}*H", "H": "H"}
    rules = [rule for rule, is_bias in info.param_rules if bias or not is_bias]
    rules += [(str(info.peephole_rows(coupled)), "H")] if peephole else []
    return tuple("(" + ", ".join(size.get(d, d) for d in rule) + ("," if len(rule) == 1 else "") + ") = "
                 for rule in rules)


@functools.lru_cache(maxsize=1024)
def param_shapes(cell: str, input_size: int, hidden_size: int, num_layers: int, bidirectional: bool, bias: bool,
                 peephole: bool = False, coupled: bool = False,
                 proj_size: int = 0) -> Tuple[Tuple[Tuple[int, ...], ...], ...]:
    """Every layer and direction's weight shapes, index l*D + d: (w_ih, w_hh[, b_ih, b_hh][, w_ch]),
    read from the C++ specs' rules (``_core.cells()[cell]["params"]``: 'G*H', 'I' the layer's input,
    'H' the width of h; rnn.h param_shape is the one copy, and ``_core.param_shapes`` agrees: see
    tests/kernels/test_cell_table.py). Sizes are not checked here (torch.nn accepts 0). ``proj_size``
    (torch.nn.LSTM's, not in the kernels): h and so w_hh's columns and the later layers' inputs are
    P wide."""
    info = TABLE[cell]
    G, D = info.gates_with(coupled), 2 if bidirectional else 1
    width = proj_size or hidden_size  # of h
    out = []
    for layer in range(num_layers):
        size = {"G*H": G * hidden_size, "I": input_size if layer == 0 else D * width, "H": width}
        entry = tuple(tuple(int(size[d]) for d in rule) for rule, is_bias in info.param_rules if bias or not is_bias)
        if peephole:
            entry += ((info.peephole_rows(coupled), int(hidden_size)),)
        out += [entry] * D
    return tuple(out)
