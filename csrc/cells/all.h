// Every cell fastrnn has, at one switch point: the runtime cell id -> its spec type, and the cell
// table that `_core.cells()` exports to Python (what each spec declares, as plain data). A new cell
// adds its spec header, one line to dispatch_cell and one to kCellKinds.
#pragma once

#include "cells/gru.h"
#include "cells/lstm.h"
#include "cells/rnn.h"
#include "cells/spec.h"

namespace fastrnn {

// In id order (CellKind values are fastrnn.types.CELLS's indices).
inline constexpr CellKind kCellKinds[] = {CellKind::RnnTanh, CellKind::RnnRelu, CellKind::Lstm, CellKind::Gru};
inline constexpr int kNumCells = 4;

inline bool valid_cell_id(int id) { return id >= 0 && id < kNumCells; }

// Runtime cell kind -> the spec type, at one switch point (style: flags become template types).
template <class F> decltype(auto) dispatch_cell(CellKind kind, F&& f) {
  switch (kind) {
    case CellKind::RnnTanh: return f(RnnCell<false>{});
    case CellKind::RnnRelu: return f(RnnCell<true>{});
    case CellKind::Lstm: return f(LstmCell{});
    case CellKind::Gru: return f(GruCell{});
  }
  throw ArgumentError("unknown cell kind");
}

// The LSTM's spec for the options other than proj_size: LstmVariant<peephole, coupled> when one is
// set (cell_clip a runtime value), else LstmCell.
template <class F> decltype(auto) dispatch_lstm(const CellOptions& o, F&& f) {
  if (o.peephole && o.coupled) return f(LstmVariant<true, true>{});
  if (o.peephole) return f(LstmVariant<true, false>{});
  if (o.coupled) return f(LstmVariant<false, true>{});
  if (o.cell_clip > 0) return f(LstmVariant<false, false>{});
  return f(LstmCell{});
}

// The same with a call's CellOptions (issue 14): the base spec when no option is set, else the
// LSTM's (dispatch_lstm), wrapped in LstmProjection<...> when proj_size > 0. Options on a cell that
// has none are refused (ArgumentError), so no option is silently ignored.
template <class F> decltype(auto) dispatch_cell(CellKind kind, const CellOptions& o, F&& f) {
  if (!o.any()) return dispatch_cell(kind, f);
  if (kind != CellKind::Lstm) throw ArgumentError("peephole, coupled, cell_clip and proj_size are LSTM options");
  if (o.proj_size > 0) return dispatch_lstm(o, [&](auto cell) { return f(LstmProjection<decltype(cell)>{}); });
  return dispatch_lstm(o, f);
}

}  // namespace fastrnn
