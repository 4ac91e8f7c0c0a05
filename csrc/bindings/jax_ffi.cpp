// XLA FFI handlers of the CPU core, for fastrnn.jax: one recurrent layer, one direction, forward
// and backward, as XLA custom calls (registered from Python with jax.ffi.register_ffi_target).
//
// Built into fastrnn._core when XLA's FFI headers (shipped with jaxlib) are found at build time
// (CMakeLists.txt, FASTRNN_JAX); the headers are header-only and speak a C ABI, so _core needs no
// jaxlib at run time, and one copy of the core (its thread team, its scratch) serves NumPy, torch
// and JAX alike. Built against the oldest supported jaxlib's headers: XLA accepts a handler built
// against an older FFI API version, never a newer one.
//
// Every buffer is passed, always: an absent optional one (c0 of a cell without a cell state, the
// biases, weight_hr, lengths, resets) is a zero-size array, and an unused result likewise. The
// Python side (python/fastrnn/jax/_ffi.py) checks shapes and dtypes at trace time; this checks
// them again (a wrong call must not read out of bounds) and checks what only run time knows: the
// values of lengths.
#include "bindings/jax_ffi.h"

#include <cstdint>
#include <exception>
#include <string>
#include <vector>

#include "bindings/jax_ffi_checks.h"
#include "bindings/scratch.h"
#include "fastrnn/fastrnn.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace fastrnn::bindings {

namespace {

using namespace jax;  // the checks shared with the CUDA handlers (jax_ffi_checks.h)

// The layer's inputs as the core takes them, checked. Forward and backward share it.
template <typename scalar_t>
struct Inputs {
  LayerInputs layer;
  ForwardArgs<scalar_t> args{};
  std::vector<int64_t> lengths;  // int64 for the core, whatever integer type JAX passed

  Inputs(int64_t cell_code, bool reverse, const ffi::AnyBuffer& x, const ffi::AnyBuffer& h0,
         const ffi::AnyBuffer& c0, const ffi::AnyBuffer& w_ih, const ffi::AnyBuffer& w_hh,
         const ffi::AnyBuffer& b_ih, const ffi::AnyBuffer& b_hh, const ffi::AnyBuffer& w_hr,
         const ffi::AnyBuffer& lengths_buf, const ffi::AnyBuffer& resets) {
    const LayerInputs& in = layer =
        check_layer(cell_code, reverse, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths_buf,
                    resets, [&](const ffi::AnyBuffer& b) { read_lengths(b, x); });
    args.shape = in.shape;
    args.x = static_cast<const scalar_t*>(in.x);
    args.h0 = static_cast<const scalar_t*>(in.h0);
    args.c0 = static_cast<const scalar_t*>(in.c0);
    args.w_ih = static_cast<const scalar_t*>(in.w_ih);
    args.w_hh = static_cast<const scalar_t*>(in.w_hh);
    args.b_ih = static_cast<const scalar_t*>(in.b_ih);
    args.b_hh = static_cast<const scalar_t*>(in.b_hh);
    args.w_hr = static_cast<const scalar_t*>(in.w_hr);
    args.lengths = in.lengths ? lengths.data() : nullptr;
    args.resets = in.resets;
  }

  // lengths' shape and dtype are checked (check_layer); its values are read here, on the host.
  void read_lengths(const ffi::AnyBuffer& b, const ffi::AnyBuffer& x) {
    const int64_t T = x.dimensions()[0], B = x.dimensions()[1];
    lengths.resize(B);
    if (b.element_type() == ffi::DataType::S64) {
      const int64_t* v = static_cast<const int64_t*>(b.untyped_data());
      lengths.assign(v, v + B);
    } else {
      const int32_t* v = static_cast<const int32_t*>(b.untyped_data());
      lengths.assign(v, v + B);
    }
    for (int64_t i = 0; i < B; ++i)
      if (lengths[i] < 1 || lengths[i] > T)
        throw BadArgument{"lengths: expected every value in [1, T=" + std::to_string(T) +
                          "], got lengths[" + std::to_string(i) + "] = " +
                          std::to_string(lengths[i])};
  }
};

// Runs body for x's float type; BadArgument and the core's errors become XLA errors (raised in
// Python as an XlaRuntimeError carrying the message).
template <typename Body>
ffi::Error guarded(const ffi::AnyBuffer& x, Body&& body) {
  try {
    if (x.element_type() == ffi::DataType::F32) {
      body(float{});
    } else if (x.element_type() == ffi::DataType::F64) {
      body(double{});
    } else {
      return ffi::Error::InvalidArgument("x: expected dtype float32 or float64");
    }
  } catch (const BadArgument& e) {
    return ffi::Error::InvalidArgument("fastrnn: " + e.message);
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("fastrnn: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error forward_impl(ffi::AnyBuffer x, ffi::AnyBuffer h0, ffi::AnyBuffer c0,
                        ffi::AnyBuffer w_ih, ffi::AnyBuffer w_hh, ffi::AnyBuffer b_ih,
                        ffi::AnyBuffer b_hh, ffi::AnyBuffer w_hr, ffi::AnyBuffer lengths,
                        ffi::AnyBuffer resets, int64_t cell, int64_t reverse, int64_t training,
                        ffi::Result<ffi::AnyBuffer> y, ffi::Result<ffi::AnyBuffer> h_n,
                        ffi::Result<ffi::AnyBuffer> c_n, ffi::Result<ffi::AnyBuffer> reserve) {
  return guarded(x, [&](auto type) {
    using scalar_t = decltype(type);
    Inputs<scalar_t> in(cell, reverse != 0, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths,
                        resets);
    ForwardArgs<scalar_t> a = in.args;
    const LayerShape& s = a.shape;
    const ForwardOutputs out = check_forward_outputs(in.layer, y, h_n, c_n);
    a.y = static_cast<scalar_t*>(out.y);
    a.h_n = static_cast<scalar_t*>(out.h_n);
    a.c_n = static_cast<scalar_t*>(out.c_n);
    a.reserve = static_cast<scalar_t*>(
        checked(reserve, "reserve", in.layer.dtype, {reserve_elements(s)}, training != 0));
    const Scratch workspace = Scratch::of<scalar_t>(forward_workspace_elements(s, training != 0));
    a.workspace = workspace.template get<scalar_t>();
    layer_forward<scalar_t>(a);
  });
}

ffi::Error backward_impl(ffi::AnyBuffer x, ffi::AnyBuffer h0, ffi::AnyBuffer c0,
                         ffi::AnyBuffer w_ih, ffi::AnyBuffer w_hh, ffi::AnyBuffer b_ih,
                         ffi::AnyBuffer b_hh, ffi::AnyBuffer w_hr, ffi::AnyBuffer lengths,
                         ffi::AnyBuffer resets, ffi::AnyBuffer reserve, ffi::AnyBuffer dy,
                         ffi::AnyBuffer dh_n, ffi::AnyBuffer dc_n, int64_t cell, int64_t reverse,
                         int64_t gate_grads, ffi::Result<ffi::AnyBuffer> dx,
                         ffi::Result<ffi::AnyBuffer> dh0, ffi::Result<ffi::AnyBuffer> dc0,
                         ffi::Result<ffi::AnyBuffer> dw_ih, ffi::Result<ffi::AnyBuffer> dw_hh,
                         ffi::Result<ffi::AnyBuffer> db_ih, ffi::Result<ffi::AnyBuffer> db_hh,
                         ffi::Result<ffi::AnyBuffer> dw_hr, ffi::Result<ffi::AnyBuffer> dgates,
                         ffi::Result<ffi::AnyBuffer> dgates_h,
                         ffi::Result<ffi::AnyBuffer> dh_proj) {
  return guarded(x, [&](auto type) {
    using scalar_t = decltype(type);
    Inputs<scalar_t> in(cell, reverse != 0, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths,
                        resets);
    BackwardArgs<scalar_t> a{};
    static_cast<ForwardArgs<scalar_t>&>(a) = in.args;
    const LayerShape& s = a.shape;
    a.reserve = static_cast<scalar_t*>(
        checked(reserve, "reserve", in.layer.dtype, {reserve_elements(s)}, true));
    const BackwardBuffers g =
        check_backward_buffers(in.layer, gate_grads != 0, dy, dh_n, dc_n, dx, dh0, dc0, dw_ih,
                               dw_hh, db_ih, db_hh, dw_hr, dgates, dgates_h, dh_proj);
    a.dy = static_cast<const scalar_t*>(g.dy);
    a.dh_n = static_cast<const scalar_t*>(g.dh_n);
    a.dc_n = static_cast<const scalar_t*>(g.dc_n);
    a.dx = static_cast<scalar_t*>(g.dx);
    a.dh0 = static_cast<scalar_t*>(g.dh0);
    a.dc0 = static_cast<scalar_t*>(g.dc0);
    a.dw_ih = static_cast<scalar_t*>(g.dw_ih);
    a.dw_hh = static_cast<scalar_t*>(g.dw_hh);
    a.db_ih = static_cast<scalar_t*>(g.db_ih);
    a.db_hh = static_cast<scalar_t*>(g.db_hh);
    a.dw_hr = static_cast<scalar_t*>(g.dw_hr);
    a.dgates = static_cast<scalar_t*>(g.dgates);
    a.dgates_h = static_cast<scalar_t*>(g.dgates_h);
    a.dh_proj = static_cast<scalar_t*>(g.dh_proj);
    const Scratch workspace = Scratch::of<scalar_t>(backward_workspace_elements(s));
    a.workspace = workspace.template get<scalar_t>();
    layer_backward<scalar_t>(a);
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    fastrnn_jax_layer_forward, forward_impl,
    ffi::Ffi::Bind()
        .Arg<ffi::AnyBuffer>()  // x
        .Arg<ffi::AnyBuffer>()  // h0
        .Arg<ffi::AnyBuffer>()  // c0
        .Arg<ffi::AnyBuffer>()  // weight_ih
        .Arg<ffi::AnyBuffer>()  // weight_hh
        .Arg<ffi::AnyBuffer>()  // bias_ih
        .Arg<ffi::AnyBuffer>()  // bias_hh
        .Arg<ffi::AnyBuffer>()  // weight_hr
        .Arg<ffi::AnyBuffer>()  // lengths
        .Arg<ffi::AnyBuffer>()  // resets
        .Attr<int64_t>("cell")
        .Attr<int64_t>("reverse")
        .Attr<int64_t>("training")
        .Ret<ffi::AnyBuffer>()   // y
        .Ret<ffi::AnyBuffer>()   // h_n
        .Ret<ffi::AnyBuffer>()   // c_n
        .Ret<ffi::AnyBuffer>());  // reserve

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    fastrnn_jax_layer_backward, backward_impl,
    ffi::Ffi::Bind()
        .Arg<ffi::AnyBuffer>()  // x
        .Arg<ffi::AnyBuffer>()  // h0
        .Arg<ffi::AnyBuffer>()  // c0
        .Arg<ffi::AnyBuffer>()  // weight_ih
        .Arg<ffi::AnyBuffer>()  // weight_hh
        .Arg<ffi::AnyBuffer>()  // bias_ih
        .Arg<ffi::AnyBuffer>()  // bias_hh
        .Arg<ffi::AnyBuffer>()  // weight_hr
        .Arg<ffi::AnyBuffer>()  // lengths
        .Arg<ffi::AnyBuffer>()  // resets
        .Arg<ffi::AnyBuffer>()  // reserve
        .Arg<ffi::AnyBuffer>()  // dy
        .Arg<ffi::AnyBuffer>()  // dh_n
        .Arg<ffi::AnyBuffer>()  // dc_n
        .Attr<int64_t>("cell")
        .Attr<int64_t>("reverse")
        .Attr<int64_t>("gate_grads")
        .Ret<ffi::AnyBuffer>()   // dx
        .Ret<ffi::AnyBuffer>()   // dh0
        .Ret<ffi::AnyBuffer>()   // dc0
        .Ret<ffi::AnyBuffer>()   // dweight_ih
        .Ret<ffi::AnyBuffer>()   // dweight_hh
        .Ret<ffi::AnyBuffer>()   // dbias_ih
        .Ret<ffi::AnyBuffer>()   // dbias_hh
        .Ret<ffi::AnyBuffer>()   // dweight_hr
        .Ret<ffi::AnyBuffer>()   // dgates
        .Ret<ffi::AnyBuffer>()   // dgates_h
        .Ret<ffi::AnyBuffer>());  // dh_proj

namespace {

py::capsule handler_capsule(XLA_FFI_Handler* handler) {
  return py::capsule(reinterpret_cast<void*>(handler));
}

}  // namespace

void add_jax_ffi(py::module_& m) {
  m.def(
      "jax_ffi_targets",
      [] {
        py::dict targets;
        targets["fastrnn_layer_forward"] = handler_capsule(fastrnn_jax_layer_forward);
        targets["fastrnn_layer_backward"] = handler_capsule(fastrnn_jax_layer_backward);
        return targets;
      },
      "{name: PyCapsule} of the XLA FFI handlers (CPU) for jax.ffi.register_ffi_target.");
  m.attr("JAX_FFI_API_VERSION") = py::make_tuple(XLA_FFI_API_MAJOR, XLA_FFI_API_MINOR);
#ifdef FASTRNN_JAXLIB_VERSION
  m.attr("JAX_FFI_BUILT_WITH_JAXLIB") = FASTRNN_JAXLIB_VERSION;
#endif
}

}  // namespace fastrnn::bindings
