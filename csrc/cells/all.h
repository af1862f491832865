// Every cell fastrnn has, at one switch point: the runtime cell id -> its spec type, and the cell
// table that `_core.cells()` exports to Python (what each spec declares, as plain data). A new cell
// adds its spec header, one line to dispatch_cell and one to kCellKinds.
#pragma once

#include "cells/gru.h"
#include "cells/layer_norm.h"
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

// The same with a call's CellOptions: the base spec when no option is set, else the
// variant's spec (the LSTM's LstmVariant<peephole, coupled> with cell_clip a runtime value, the
// GRU's GruResetBefore).
// Options on a cell that has none are refused (ArgumentError), so no option is silently ignored.
template <class F> decltype(auto) dispatch_cell(CellKind kind, const CellOptions& o, F&& f) {
  if (!o.any()) return dispatch_cell(kind, f);
  const bool lstm_options = o.peephole || o.coupled || o.cell_clip > 0;
  if (o.layer_norm) {
    if (lstm_options || !o.reset_after)
      throw ArgumentError("layer_norm does not combine with peephole, coupled, cell_clip or reset_after=False");
    if (kind == CellKind::Lstm) return f(LstmLayerNorm{});
    if (kind == CellKind::Gru) return f(GruLayerNorm{});
    throw ArgumentError("layer_norm is an LSTM/GRU option");
  }
  if (!o.reset_after) {
    if (kind != CellKind::Gru || lstm_options) throw ArgumentError("reset_after=False is a GRU option");
    return f(GruResetBefore{});
  }
  if (kind != CellKind::Lstm) throw ArgumentError("peephole, coupled and cell_clip are LSTM options");
  if (o.peephole && o.coupled) return f(LstmVariant<true, true>{});
  if (o.peephole) return f(LstmVariant<true, false>{});
  if (o.coupled) return f(LstmVariant<false, true>{});
  return f(LstmVariant<false, false>{});
}

}  // namespace fastrnn
