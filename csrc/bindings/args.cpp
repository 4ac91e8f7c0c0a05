// fastrnn._core's argument checks (args.h).
#include "bindings/args.h"

#include <limits>
#include <sstream>

namespace fastrnn::bindings {

std::string shape_str(const std::vector<int64_t>& dims) {
  std::ostringstream out;
  out << "(";
  for (size_t i = 0; i < dims.size(); ++i) out << (i ? ", " : "") << dims[i];
  out << (dims.size() == 1 ? ",)" : ")");
  return out.str();
}

std::vector<int64_t> shape_of(const py::array& a) {
  return std::vector<int64_t>(a.shape(), a.shape() + a.ndim());
}

py::array as_array(const py::object& obj, const char* name) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(std::string(name) + ": expected a numpy.ndarray, got " +
                         std::string(py::str(py::type::of(obj).attr("__name__"))));
  return py::reinterpret_borrow<py::array>(obj);
}

template <typename scalar_t>
py::array checked(const py::object& obj, const char* name, const std::vector<int64_t>& expected) {
  py::array a = as_array(obj, name);
  if (!a.dtype().equal(py::dtype::of<scalar_t>()))
    throw DtypeError(std::string(name) + ": expected dtype " +
                     std::string(py::str(py::dtype::of<scalar_t>())) + ", got " +
                     std::string(py::str(a.dtype())));
  if (shape_of(a) != expected)
    throw py::value_error(std::string(name) + ": expected shape " + shape_str(expected) +
                          ", got " + shape_str(shape_of(a)));
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + ": expected a C-contiguous array (use "
                          "numpy.ascontiguousarray), got strides " +
                          shape_str(std::vector<int64_t>(a.strides(), a.strides() + a.ndim())));
  if (!(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
    throw py::value_error(std::string(name) + ": expected an aligned array (use "
                          "numpy.require(a, requirements='CA')), got an unaligned buffer");
  return a;
}

Cell cell_from(int code) {
  if (code < 0 || code >= cell_list::kCount) {
    // "0 (rnn_tanh), 1 (rnn_relu), 2 (lstm) or 3 (gru)", from the list of cells
    std::string codes;
    int listed = 0;
#define FASTRNN_CELL_CODE(name)                                                               \
  codes += std::string(listed == 0 ? "" : listed == cell_list::kCount - 1 ? " or " : ", ") + \
           std::to_string(static_cast<int>(Cell::name)) + " (" + CellInfo<Cell::name>::kName + ")"; \
  ++listed;
    FASTRNN_CELLS(FASTRNN_CELL_CODE)
#undef FASTRNN_CELL_CODE
    throw py::value_error("cell: expected " + codes + ", got " + std::to_string(code));
  }
  return static_cast<Cell>(code);
}

std::string cpu_dtype_names() {
  std::string names;
  int listed = 0;
  constexpr int kDtypes = 0
#define FASTRNN_CPU_DTYPE_COUNT(type, type_name) +1
      FASTRNN_CPU_DTYPES(FASTRNN_CPU_DTYPE_COUNT);
#undef FASTRNN_CPU_DTYPE_COUNT
#define FASTRNN_CPU_DTYPE_NAME(type, type_name) \
  names += std::string(listed == 0 ? "" : listed == kDtypes - 1 ? " or " : ", ") + type_name; \
  ++listed;
  FASTRNN_CPU_DTYPES(FASTRNN_CPU_DTYPE_NAME)
#undef FASTRNN_CPU_DTYPE_NAME
  return names;
}

template <typename scalar_t>
LayerInputs<scalar_t>::LayerInputs(int cell_code, const py::object& x_obj,
                                   const py::object& h0_obj, const py::object& c0_obj,
                                   const py::object& w_ih_obj, const py::object& w_hh_obj,
                                   const py::object& b_ih_obj, const py::object& b_hh_obj,
                                   const py::object& w_hr_obj, const py::object& lengths_obj,
                                   bool reverse, const py::object& resets_obj) {
  const Cell cell = cell_from(cell_code);
  py::array xa = as_array(x_obj, "x");
  if (xa.ndim() != 3)
    throw py::value_error("x: expected a 3-D array (T, B, I), got shape " +
                          shape_str(shape_of(xa)));
  const int64_t T = xa.shape(0), B = xa.shape(1), I = xa.shape(2);
  if (T < 1 || B < 1 || I < 1)
    throw py::value_error("x: expected T, B, I >= 1, got shape " + shape_str(shape_of(xa)));
  py::array wh = as_array(w_hh_obj, "weight_hh");
  const int64_t G = num_gates(cell);
  if (wh.ndim() != 2 || wh.shape(0) < G || wh.shape(0) % G != 0 || wh.shape(1) < 1)
    throw py::value_error("weight_hh: expected a 2-D array (G*H, R) with G = " +
                          std::to_string(G) + " gates, got shape " + shape_str(shape_of(wh)));
  // H comes from weight_hh's rows; R (the state size) from its columns: R = H, or the
  // projection size P with weight_hr (P, H) for an LSTM.
  const int64_t H = wh.shape(0) / G, R = wh.shape(1);
  int64_t P = 0;
  if (!w_hr_obj.is_none()) {
    if (!can_project(cell))
      throw py::value_error("weight_hr: only an LSTM layer has a projection; expected None");
    py::array wr = as_array(w_hr_obj, "weight_hr");
    if (wr.ndim() != 2 || wr.shape(0) < 1 || wr.shape(0) >= H)
      throw py::value_error("weight_hr: expected a 2-D array (P, H) with 0 < P < H = " +
                            std::to_string(H) + ", got shape " + shape_str(shape_of(wr)));
    P = wr.shape(0);
    w_hr = checked<scalar_t>(w_hr_obj, "weight_hr", {P, H});
  }
  const int64_t state = P > 0 ? P : H;
  if (R != state)
    throw py::value_error("weight_hh: expected shape " + shape_str({G * H, state}) +
                          (P > 0 ? " (G*H, P)" : " (G*H, H)") + ", got " +
                          shape_str(shape_of(wh)));
  shape = LayerShape{cell, T, B, I, H, reverse, P};
  x = checked<scalar_t>(x_obj, "x", {T, B, I});
  w_ih = checked<scalar_t>(w_ih_obj, "weight_ih", {G * H, I});
  w_hh = checked<scalar_t>(w_hh_obj, "weight_hh", {G * H, state});
  h0 = checked<scalar_t>(h0_obj, "h0", {B, state});
  if (has_cell_state(cell)) {
    if (c0_obj.is_none()) throw py::value_error("c0: required for an LSTM layer, got None");
    c0 = checked<scalar_t>(c0_obj, "c0", {B, H});
  } else if (!c0_obj.is_none()) {
    throw py::value_error("c0: only an LSTM layer has a cell state; expected None");
  }
  if (b_ih_obj.is_none() != b_hh_obj.is_none())
    throw py::value_error("bias_ih, bias_hh: pass both or neither");
  if (!b_ih_obj.is_none()) {
    b_ih = checked<scalar_t>(b_ih_obj, "bias_ih", {G * H});
    b_hh = checked<scalar_t>(b_hh_obj, "bias_hh", {G * H});
  }
  if (!lengths_obj.is_none()) {
    py::array la = as_array(lengths_obj, "lengths");
    if (!la.dtype().equal(py::dtype::of<int64_t>()))
      throw LengthsError("lengths: expected dtype int64, got " + std::string(py::str(la.dtype())));
    if (shape_of(la) != std::vector<int64_t>{B})
      throw LengthsError("lengths: expected shape " + shape_str({B}) + ", got " +
                         shape_str(shape_of(la)));
    if (!(la.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
      throw LengthsError("lengths: expected an aligned array, got an unaligned buffer");
    auto view = la.unchecked<int64_t, 1>();
    lengths.resize(B);
    for (int64_t b = 0; b < B; ++b) {
      lengths[b] = view(b);
      if (lengths[b] < 1 || lengths[b] > T)
        throw LengthsError("lengths: expected every value in [1, T=" + std::to_string(T) +
                           "], got lengths[" + std::to_string(b) +
                           "] = " + std::to_string(lengths[b]));
    }
  }
  if (!resets_obj.is_none()) {
    py::array ra = as_array(resets_obj, "resets");
    if (!ra.dtype().equal(py::dtype::of<bool>()))
      throw DtypeError("resets: expected dtype bool, got " + std::string(py::str(ra.dtype())));
    if (shape_of(ra) != std::vector<int64_t>{T, B})
      throw py::value_error("resets: expected shape (T, B) = " + shape_str({T, B}) + ", got " +
                            shape_str(shape_of(ra)));
    auto view = ra.unchecked<bool, 2>();
    resets.resize(T * B);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t b = 0; b < B; ++b) resets[t * B + b] = view(t, b) ? 1 : 0;
  }
  // Every BLAS product's dimensions are among T*B, G*H, I and R (<= H): refuse, before
  // anything is allocated, sizes the library's 32-bit indices cannot address.
  const int64_t blas_max = std::numeric_limits<int>::max();
  for (auto [what, v] : {std::pair<const char*, int64_t>{"x: T*B", T * B}, {"x: I", I},
                         {"weight_hh: G*H", G * H}})
    if (v > blas_max)
      throw py::value_error(std::string(what) + " = " + std::to_string(v) +
                            " exceeds the BLAS library's 32-bit index range (at most " +
                            std::to_string(blas_max) + ")");
  // Every dtype must agree; checked<> above enforces scalar_t everywhere.
}

namespace {
template <typename scalar_t>
const scalar_t* in_ptr(const std::optional<py::array>& a) {
  return a ? static_cast<const scalar_t*>(a->data()) : nullptr;
}
}  // namespace

template <typename scalar_t>
ForwardArgs<scalar_t> LayerInputs<scalar_t>::args() const {
  ForwardArgs<scalar_t> a{};
  a.shape = shape;
  a.x = static_cast<const scalar_t*>(x.data());
  a.h0 = static_cast<const scalar_t*>(h0.data());
  a.c0 = in_ptr<scalar_t>(c0);
  a.w_ih = static_cast<const scalar_t*>(w_ih.data());
  a.w_hh = static_cast<const scalar_t*>(w_hh.data());
  a.b_ih = in_ptr<scalar_t>(b_ih);
  a.b_hh = in_ptr<scalar_t>(b_hh);
  a.w_hr = in_ptr<scalar_t>(w_hr);
  a.lengths = lengths.empty() ? nullptr : lengths.data();
  a.resets = resets.empty() ? nullptr : resets.data();
  return a;
}

template <typename scalar_t>
GradInputs<scalar_t>::GradInputs(const LayerShape& s, const py::object& reserve_obj,
                                 const py::object& dy_obj, const py::object& dh_n_obj,
                                 const py::object& dc_n_obj) {
  reserve = checked<scalar_t>(reserve_obj, "reserve", {reserve_elements(s)});
  dy = checked<scalar_t>(dy_obj, "dy", {s.T, s.B, s.R()});
  if (!dh_n_obj.is_none()) dh_n = checked<scalar_t>(dh_n_obj, "dh_n", {s.B, s.R()});
  if (!dc_n_obj.is_none()) {
    if (!has_cell_state(s.cell))
      throw py::value_error("dc_n: only an LSTM layer has a cell state; expected None");
    dc_n = checked<scalar_t>(dc_n_obj, "dc_n", {s.B, s.H});
  }
}

#define FASTRNN_CPU_DTYPE_INSTANCES(type, type_name)                                      \
  template py::array checked<type>(const py::object&, const char*,                        \
                                   const std::vector<int64_t>&);                          \
  template struct LayerInputs<type>;                                                      \
  template struct GradInputs<type>;
FASTRNN_CPU_DTYPES(FASTRNN_CPU_DTYPE_INSTANCES)
#undef FASTRNN_CPU_DTYPE_INSTANCES

namespace {
// P of a size query; before the cell itself is checked (an unknown cell cannot project).
void check_projection(int cell, int64_t H, int64_t P) {
  const bool known = cell >= 0 && cell < cell_list::kCount;
  if (P < 0 || P >= H || (P > 0 && !(known && can_project(static_cast<Cell>(cell)))))
    throw py::value_error("P: expected 0 (or 0 < P < H for an LSTM), got " + std::to_string(P));
}
}  // namespace

LayerShape size_query(int cell, int64_t T, int64_t B, int64_t I, int64_t H, int64_t P) {
  const int64_t limit = int64_t(1) << 31;  // keeps every product below 2^63
  for (auto [name, v] : {std::pair<const char*, int64_t>{"T", T}, {"B", B}, {"I", I}, {"H", H}})
    if (v < 1 || v >= limit)
      throw py::value_error(std::string(name) + ": expected 1 <= " + name + " < 2^31, got " +
                            std::to_string(v));
  check_projection(cell, H, P);
  // The largest buffers hold at most 8 values per step, row and hidden unit (T*B*(4H + 4H)).
  if (static_cast<double>(T + 1) * B * 8 * (H + I) >= 9.2e18)
    throw py::value_error("T, B, I, H: the sizes overflow 64-bit integers");
  return LayerShape{cell_from(cell), T, B, I, H, false, P};
}

LayerShape widths_query(int cell, int64_t H, int64_t P) {
  if (H < 1) throw py::value_error("H: expected H >= 1, got " + std::to_string(H));
  check_projection(cell, H, P);
  return LayerShape{cell_from(cell), 1, 1, 1, H, false, P};
}

Activation activation_kind(const std::string& kind) {
  if (kind == "sigmoid") return Activation::Sigmoid;
  if (kind == "tanh") return Activation::Tanh;
  throw py::value_error("kind: expected 'sigmoid' or 'tanh', got '" + kind + "'");
}

bool measure_dtype_is_float64(const std::string& dtype) {
  if (dtype != "float32" && dtype != "float64")
    throw py::value_error("dtype: expected 'float32' or 'float64', got '" + dtype + "'");
  return dtype == "float64";
}

}  // namespace fastrnn::bindings
