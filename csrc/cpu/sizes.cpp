// Reserve and workspace sizes: the layouts they describe are in layer_impl.h.
#include "cpu/layer_impl.h"

namespace fastrnn {

int64_t reserve_elements(const LayerShape& s) {
  const int64_t state = (s.T + 1) * s.B * s.H;
  return state * (has_cell_state(s.cell) ? 2 : 1) + s.T * s.B * cpu::saved_width(s.cell, s.H);
}

int64_t forward_workspace_elements(const LayerShape& s, bool training) {
  const int64_t GH = s.gate_width();
  const int64_t pingpong = training ? 0 : 4 * s.B * s.H;
  return s.T * s.B * GH + s.B * GH + GH + pingpong;
}

int64_t backward_workspace_elements(const LayerShape& s) {
  const int64_t GH = s.gate_width();
  const int64_t gate_grads = s.T * s.B * GH * (s.cell == Cell::Gru ? 2 : 1);
  return gate_grads + 5 * s.B * s.H;
}

}  // namespace fastrnn
