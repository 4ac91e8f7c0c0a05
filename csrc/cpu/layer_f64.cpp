// Explicit instantiation of the CPU layer entry points for double.
#include "cpu/layer_impl.h"

namespace fastrnn {

template <>
void layer_forward<double>(const ForwardArgs<double>& args) { cpu::dispatch_forward<double>(args); }

template <>
void layer_backward<double>(const BackwardArgs<double>& args) { cpu::dispatch_backward<double>(args); }

}  // namespace fastrnn
