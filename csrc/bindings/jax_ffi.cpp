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

#include "bindings/scratch.h"
#include "fastrnn/fastrnn.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace fastrnn::bindings {

namespace {

using Dims = std::vector<int64_t>;

Dims dims_of(const ffi::AnyBuffer& b) {
  auto d = b.dimensions();
  return Dims(d.begin(), d.end());
}

std::string dims_str(const Dims& d) {
  std::string s = "(";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + (d.size() == 1 ? ",)" : ")");
}

// A bad call: the message names the argument, as every fastrnn error does.
struct BadArgument {
  std::string message;
};

template <typename scalar_t>
constexpr ffi::DataType kFloatType = std::is_same_v<scalar_t, float> ? ffi::DataType::F32
                                                                      : ffi::DataType::F64;

// Checks a float buffer's dtype and shape; an empty `expected` with `optional` accepts a
// zero-size buffer (absent). Returns its data, or nullptr when absent.
template <typename scalar_t>
const scalar_t* input(const ffi::AnyBuffer& b, const char* name, const Dims& expected,
                      bool present) {
  if (!present) {
    if (b.element_count() != 0)
      throw BadArgument{std::string(name) + ": expected a zero-size placeholder, got shape " +
                        dims_str(dims_of(b))};
    return nullptr;
  }
  if (b.element_type() != kFloatType<scalar_t>)
    throw BadArgument{std::string(name) + ": expected the dtype of x"};
  if (dims_of(b) != expected)
    throw BadArgument{std::string(name) + ": expected shape " + dims_str(expected) + ", got " +
                      dims_str(dims_of(b))};
  return static_cast<const scalar_t*>(b.untyped_data());
}

template <typename scalar_t>
scalar_t* output(ffi::Result<ffi::AnyBuffer>& b, const char* name, const Dims& expected,
                 bool present) {
  return const_cast<scalar_t*>(input<scalar_t>(*b, name, expected, present));
}

// The layer's inputs as the core takes them, checked. Forward and backward share it.
template <typename scalar_t>
struct Inputs {
  ForwardArgs<scalar_t> args{};
  std::vector<int64_t> lengths;  // int64 for the core, whatever integer type JAX passed

  Inputs(int64_t cell_code, bool reverse, const ffi::AnyBuffer& x, const ffi::AnyBuffer& h0,
         const ffi::AnyBuffer& c0, const ffi::AnyBuffer& w_ih, const ffi::AnyBuffer& w_hh,
         const ffi::AnyBuffer& b_ih, const ffi::AnyBuffer& b_hh, const ffi::AnyBuffer& w_hr,
         const ffi::AnyBuffer& lengths_buf, const ffi::AnyBuffer& resets) {
    LayerShape& s = args.shape;
    if (cell_code < 0 || cell_code >= cell_list::kCount)
      throw BadArgument{"cell: unknown cell code " + std::to_string(cell_code)};
    s.cell = static_cast<Cell>(cell_code);
    s.reverse = reverse;
    const Dims xd = dims_of(x), wd = dims_of(w_hh);
    if (xd.size() != 3 || xd[0] < 1 || xd[1] < 1 || xd[2] < 1)
      throw BadArgument{"x: expected shape (T, B, I) with every size >= 1, got " + dims_str(xd)};
    const int64_t G = num_gates(s.cell);
    if (wd.size() != 2 || wd[0] < G || wd[0] % G != 0)
      throw BadArgument{"weight_hh: expected shape (G*H, R), got " + dims_str(wd)};
    s.T = xd[0];
    s.B = xd[1];
    s.I = xd[2];
    s.H = wd[0] / G;
    s.P = w_hr.element_count() ? dims_of(w_hr)[0] : 0;
    const int64_t GH = s.gate_width(), R = s.R();
    const bool bias = b_ih.element_count() != 0;
    args.x = input<scalar_t>(x, "x", xd, true);
    args.h0 = input<scalar_t>(h0, "h0", {s.B, R}, true);
    args.c0 = input<scalar_t>(c0, "c0", {s.B, s.H}, has_cell_state(s.cell));
    args.w_ih = input<scalar_t>(w_ih, "weight_ih", {GH, s.I}, true);
    args.w_hh = input<scalar_t>(w_hh, "weight_hh", {GH, R}, true);
    args.b_ih = input<scalar_t>(b_ih, "bias_ih", {GH}, bias);
    args.b_hh = input<scalar_t>(b_hh, "bias_hh", {GH}, bias);
    args.w_hr = input<scalar_t>(w_hr, "weight_hr", {s.P, s.H}, s.P > 0);
    if (s.P > 0 && (!can_project(s.cell) || s.P >= s.H))
      throw BadArgument{"weight_hr: expected shape (P, H) with 0 < P < H for an LSTM"};
    if (lengths_buf.element_count()) read_lengths(lengths_buf);
    if (resets.element_count()) {
      if (resets.element_type() != ffi::DataType::PRED && resets.element_type() != ffi::DataType::U8)
        throw BadArgument{"resets: expected dtype bool"};
      if (dims_of(resets) != Dims{s.T, s.B})
        throw BadArgument{"resets: expected shape " + dims_str({s.T, s.B}) + ", got " +
                          dims_str(dims_of(resets))};
      args.resets = static_cast<const uint8_t*>(resets.untyped_data());
    }
  }

  void read_lengths(const ffi::AnyBuffer& b) {
    const LayerShape& s = args.shape;
    if (dims_of(b) != Dims{s.B})
      throw BadArgument{"lengths: expected shape " + dims_str({s.B}) + ", got " +
                        dims_str(dims_of(b))};
    lengths.resize(s.B);
    if (b.element_type() == ffi::DataType::S64) {
      const int64_t* v = static_cast<const int64_t*>(b.untyped_data());
      lengths.assign(v, v + s.B);
    } else if (b.element_type() == ffi::DataType::S32) {
      const int32_t* v = static_cast<const int32_t*>(b.untyped_data());
      lengths.assign(v, v + s.B);
    } else {
      throw BadArgument{"lengths: expected dtype int32 or int64"};
    }
    for (int64_t i = 0; i < s.B; ++i)
      if (lengths[i] < 1 || lengths[i] > s.T)
        throw BadArgument{"lengths: expected every value in [1, T=" + std::to_string(s.T) +
                          "], got lengths[" + std::to_string(i) + "] = " +
                          std::to_string(lengths[i])};
    args.lengths = lengths.data();
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
    a.y = output<scalar_t>(y, "y", {s.T, s.B, s.R()}, true);
    a.h_n = output<scalar_t>(h_n, "h_n", {s.B, s.R()}, true);
    a.c_n = output<scalar_t>(c_n, "c_n", {s.B, s.H}, has_cell_state(s.cell));
    a.reserve = output<scalar_t>(reserve, "reserve", {reserve_elements(s)}, training != 0);
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
    const int64_t GH = s.gate_width(), R = s.R();
    const bool lstm = has_cell_state(s.cell), bias = in.args.b_ih != nullptr;
    const bool gates = gate_grads != 0, weights = !gates;
    a.reserve = const_cast<scalar_t*>(
        input<scalar_t>(reserve, "reserve", {reserve_elements(s)}, true));
    a.dy = input<scalar_t>(dy, "dy", {s.T, s.B, R}, true);
    a.dh_n = input<scalar_t>(dh_n, "dh_n", {s.B, R}, true);
    a.dc_n = input<scalar_t>(dc_n, "dc_n", {s.B, s.H}, lstm);
    a.dx = output<scalar_t>(dx, "dx", {s.T, s.B, s.I}, true);
    a.dh0 = output<scalar_t>(dh0, "dh0", {s.B, R}, true);
    a.dc0 = output<scalar_t>(dc0, "dc0", {s.B, s.H}, lstm);
    a.dw_ih = output<scalar_t>(dw_ih, "dweight_ih", {GH, s.I}, weights);
    a.dw_hh = output<scalar_t>(dw_hh, "dweight_hh", {GH, R}, weights);
    a.db_ih = output<scalar_t>(db_ih, "dbias_ih", {GH}, weights && bias);
    a.db_hh = output<scalar_t>(db_hh, "dbias_hh", {GH}, weights && bias);
    a.dw_hr = output<scalar_t>(dw_hr, "dweight_hr", {s.P, s.H}, weights && s.P > 0);
    a.dgates = output<scalar_t>(dgates, "dgates", {s.T, s.B, GH}, gates);
    a.dgates_h = output<scalar_t>(dgates_h, "dgates_h", {s.T, s.B, s.H},
                                  gates && scales_recurrent_gate(s.cell));
    a.dh_proj = output<scalar_t>(dh_proj, "dh_proj", {s.T, s.B, R}, gates && s.P > 0);
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
