// Explicit instantiation of the CPU layer entry points for float.
#include "cpu/layer_impl.h"

namespace fastrnn {

template <>
void layer_forward<float>(const ForwardArgs<float>& args) { cpu::dispatch_forward<float>(args); }

template <>
void layer_backward<float>(const BackwardArgs<float>& args) { cpu::dispatch_backward<float>(args); }

}  // namespace fastrnn
