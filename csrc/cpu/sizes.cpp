// Reserve and workspace sizes: the layouts they describe are in layer_impl.h.
#include "cpu/layer_impl.h"

namespace fastrnn {

int64_t reserve_elements(const LayerShape& s) { return cpu::reserve_elements_of(s); }

ReserveWidths reserve_widths(const LayerShape& s) { return cpu::reserve_widths_of(s); }

int64_t forward_workspace_elements(const LayerShape& s, bool training) {
  return cpu::forward_workspace_elements_of(s, training);
}

int64_t backward_workspace_elements(const LayerShape& s) {
  return cpu::backward_workspace_elements_of(s);
}

}  // namespace fastrnn
