// The argument checks the XLA FFI handlers share: the CPU core's (jax_ffi.cpp, in fastrnn._core)
// and the CUDA backend's (jax_ffi_cuda.cpp, in fastrnn._cuda) take the same buffers, attributes
// and results, so they check them with the same code and the same messages. Header-only (each
// extension module compiles its own copy); the handlers add what differs: the dtypes they run,
// the reserve's size, and what they do with the values of lengths (the CPU reads them on the host;
// on the GPU they stay on the device).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "fastrnn/fastrnn.h"
#include "xla/ffi/api/ffi.h"

namespace fastrnn::bindings::jax {

namespace ffi = xla::ffi;

using Dims = std::vector<int64_t>;

inline Dims dims_of(const ffi::AnyBuffer& b) {
  auto d = b.dimensions();
  return Dims(d.begin(), d.end());
}

inline std::string dims_str(const Dims& d) {
  std::string s = "(";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + (d.size() == 1 ? ",)" : ")");
}

// A bad call: the message names the argument, as every fastrnn error does.
struct BadArgument {
  std::string message;
};

// Checks a buffer of x's dtype (`dtype`) and its shape; when not `present` it must be a zero-size
// placeholder (an absent optional buffer, or an unused result). Returns its data, or nullptr when
// absent.
inline void* checked(const ffi::AnyBuffer& b, const char* name, ffi::DataType dtype,
                     const Dims& expected, bool present) {
  if (!present) {
    if (b.element_count() != 0)
      throw BadArgument{std::string(name) + ": expected a zero-size placeholder, got shape " +
                        dims_str(dims_of(b))};
    return nullptr;
  }
  if (b.element_type() != dtype) throw BadArgument{std::string(name) + ": expected the dtype of x"};
  if (dims_of(b) != expected)
    throw BadArgument{std::string(name) + ": expected shape " + dims_str(expected) + ", got " +
                      dims_str(dims_of(b))};
  return b.untyped_data();
}

inline void* checked(ffi::Result<ffi::AnyBuffer>& b, const char* name, ffi::DataType dtype,
                     const Dims& expected, bool present) {
  return checked(*b, name, dtype, expected, present);
}

// The layer's inputs, checked: its shape (from x, weight_hh and weight_hr) and the data of every
// buffer (nullptr where absent). lengths is checked for shape and dtype (int32 or int64) only.
struct LayerInputs {
  LayerShape shape{};
  ffi::DataType dtype = ffi::DataType::INVALID;  // x's: every float buffer's
  const void *x = nullptr, *h0 = nullptr, *c0 = nullptr, *w_ih = nullptr, *w_hh = nullptr,
             *b_ih = nullptr, *b_hh = nullptr, *w_hr = nullptr;
  const ffi::AnyBuffer* lengths = nullptr;  // (B) int32 or int64, or nullptr (absent)
  const uint8_t* resets = nullptr;          // (T, B) bool, or nullptr
};

// read_lengths(const ffi::AnyBuffer&) runs right after lengths' shape and dtype are checked (the
// CPU handler checks the values there, so that the order of the checks, and the first error of a
// call with several, is the same as ever).
template <typename ReadLengths>
LayerInputs check_layer(int64_t cell_code, bool reverse, const ffi::AnyBuffer& x,
                        const ffi::AnyBuffer& h0, const ffi::AnyBuffer& c0,
                        const ffi::AnyBuffer& w_ih, const ffi::AnyBuffer& w_hh,
                        const ffi::AnyBuffer& b_ih, const ffi::AnyBuffer& b_hh,
                        const ffi::AnyBuffer& w_hr, const ffi::AnyBuffer& lengths,
                        const ffi::AnyBuffer& resets, ReadLengths&& read_lengths) {
  LayerInputs in;
  LayerShape& s = in.shape;
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
  const ffi::DataType t = in.dtype = x.element_type();
  in.x = checked(x, "x", t, xd, true);
  in.h0 = checked(h0, "h0", t, {s.B, R}, true);
  in.c0 = checked(c0, "c0", t, {s.B, s.H}, has_cell_state(s.cell));
  in.w_ih = checked(w_ih, "weight_ih", t, {GH, s.I}, true);
  in.w_hh = checked(w_hh, "weight_hh", t, {GH, R}, true);
  in.b_ih = checked(b_ih, "bias_ih", t, {GH}, bias);
  in.b_hh = checked(b_hh, "bias_hh", t, {GH}, bias);
  in.w_hr = checked(w_hr, "weight_hr", t, {s.P, s.H}, s.P > 0);
  if (s.P > 0 && (!can_project(s.cell) || s.P >= s.H))
    throw BadArgument{"weight_hr: expected shape (P, H) with 0 < P < H for an LSTM"};
  if (lengths.element_count()) {
    if (dims_of(lengths) != Dims{s.B})
      throw BadArgument{"lengths: expected shape " + dims_str({s.B}) + ", got " +
                        dims_str(dims_of(lengths))};
    if (lengths.element_type() != ffi::DataType::S64 &&
        lengths.element_type() != ffi::DataType::S32)
      throw BadArgument{"lengths: expected dtype int32 or int64"};
    in.lengths = &lengths;
    read_lengths(lengths);
  }
  if (resets.element_count()) {
    if (resets.element_type() != ffi::DataType::PRED && resets.element_type() != ffi::DataType::U8)
      throw BadArgument{"resets: expected dtype bool"};
    if (dims_of(resets) != Dims{s.T, s.B})
      throw BadArgument{"resets: expected shape " + dims_str({s.T, s.B}) + ", got " +
                        dims_str(dims_of(resets))};
    in.resets = static_cast<const uint8_t*>(resets.untyped_data());
  }
  return in;
}

// The forward's results y, h_n and c_n, checked (the reserve is the handler's: its size is the
// backend's).
struct ForwardOutputs {
  void *y, *h_n, *c_n;
};

inline ForwardOutputs check_forward_outputs(const LayerInputs& in, ffi::Result<ffi::AnyBuffer>& y,
                                            ffi::Result<ffi::AnyBuffer>& h_n,
                                            ffi::Result<ffi::AnyBuffer>& c_n) {
  const LayerShape& s = in.shape;
  ForwardOutputs out;
  out.y = checked(y, "y", in.dtype, {s.T, s.B, s.R()}, true);
  out.h_n = checked(h_n, "h_n", in.dtype, {s.B, s.R()}, true);
  out.c_n = checked(c_n, "c_n", in.dtype, {s.B, s.H}, has_cell_state(s.cell));
  return out;
}

// The backward's incoming gradients and its results, checked. With gate_grads the weight
// gradients are zero-size placeholders and dgates (with dgates_h for a GRU, dh_proj with a
// projection) are written instead; without, the reverse.
struct BackwardBuffers {
  const void *dy, *dh_n, *dc_n;
  void *dx, *dh0, *dc0, *dw_ih, *dw_hh, *db_ih, *db_hh, *dw_hr, *dgates, *dgates_h, *dh_proj;
};

inline BackwardBuffers check_backward_buffers(
    const LayerInputs& in, bool gate_grads, const ffi::AnyBuffer& dy, const ffi::AnyBuffer& dh_n,
    const ffi::AnyBuffer& dc_n, ffi::Result<ffi::AnyBuffer>& dx, ffi::Result<ffi::AnyBuffer>& dh0,
    ffi::Result<ffi::AnyBuffer>& dc0, ffi::Result<ffi::AnyBuffer>& dw_ih,
    ffi::Result<ffi::AnyBuffer>& dw_hh, ffi::Result<ffi::AnyBuffer>& db_ih,
    ffi::Result<ffi::AnyBuffer>& db_hh, ffi::Result<ffi::AnyBuffer>& dw_hr,
    ffi::Result<ffi::AnyBuffer>& dgates, ffi::Result<ffi::AnyBuffer>& dgates_h,
    ffi::Result<ffi::AnyBuffer>& dh_proj) {
  const LayerShape& s = in.shape;
  const ffi::DataType t = in.dtype;
  const int64_t GH = s.gate_width(), R = s.R();
  const bool lstm = has_cell_state(s.cell), bias = in.b_ih != nullptr;
  const bool gates = gate_grads, weights = !gates;
  BackwardBuffers g;
  g.dy = checked(dy, "dy", t, {s.T, s.B, R}, true);
  g.dh_n = checked(dh_n, "dh_n", t, {s.B, R}, true);
  g.dc_n = checked(dc_n, "dc_n", t, {s.B, s.H}, lstm);
  g.dx = checked(dx, "dx", t, {s.T, s.B, s.I}, true);
  g.dh0 = checked(dh0, "dh0", t, {s.B, R}, true);
  g.dc0 = checked(dc0, "dc0", t, {s.B, s.H}, lstm);
  g.dw_ih = checked(dw_ih, "dweight_ih", t, {GH, s.I}, weights);
  g.dw_hh = checked(dw_hh, "dweight_hh", t, {GH, R}, weights);
  g.db_ih = checked(db_ih, "dbias_ih", t, {GH}, weights && bias);
  g.db_hh = checked(db_hh, "dbias_hh", t, {GH}, weights && bias);
  g.dw_hr = checked(dw_hr, "dweight_hr", t, {s.P, s.H}, weights && s.P > 0);
  g.dgates = checked(dgates, "dgates", t, {s.T, s.B, GH}, gates);
  g.dgates_h = checked(dgates_h, "dgates_h", t, {s.T, s.B, s.H},
                       gates && scales_recurrent_gate(s.cell));
  g.dh_proj = checked(dh_proj, "dh_proj", t, {s.T, s.B, R}, gates && s.P > 0);
  return g;
}

}  // namespace fastrnn::bindings::jax
