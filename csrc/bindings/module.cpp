// fastrnn._core: the one Python extension module. It checks every array it is given (type,
// dtype, C-contiguity, shape, lengths range), allocates outputs, releases the GIL around the
// native work, and turns C++ errors into Python exceptions that name the argument.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <unistd.h>

#include "fastrnn/fastrnn.h"

namespace py = pybind11;
using fastrnn::Cell;
using fastrnn::LayerShape;

namespace {

// Raised as fastrnn.LengthsError, a subclass of both ValueError and IndexError.
struct LengthsError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct DtypeError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// Raised as MemoryError.
struct OutOfMemory : std::runtime_error {
  using std::runtime_error::runtime_error;
};

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

// Checks type, dtype, contiguity and shape of one array argument.
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

template <typename scalar_t>
const scalar_t* in_ptr(const std::optional<py::array>& a) {
  return a ? static_cast<const scalar_t*>(a->data()) : nullptr;
}

Cell cell_from(int code) {
  if (code < 0 || code > 3)
    throw py::value_error("cell: expected 0 (rnn_tanh), 1 (rnn_relu), 2 (lstm) or 3 (gru), got " +
                          std::to_string(code));
  return static_cast<Cell>(code);
}

// Everything a layer call reads, checked once. Forward and backward share it.
template <typename scalar_t>
struct LayerInputs {
  LayerShape shape;
  py::array x, h0, w_ih, w_hh;
  std::optional<py::array> c0, b_ih, b_hh, w_hr;
  std::vector<int64_t> lengths;  // empty when None

  LayerInputs(int cell_code, const py::object& x_obj, const py::object& h0_obj,
              const py::object& c0_obj, const py::object& w_ih_obj, const py::object& w_hh_obj,
              const py::object& b_ih_obj, const py::object& b_hh_obj,
              const py::object& w_hr_obj, const py::object& lengths_obj, bool reverse) {
    const Cell cell = cell_from(cell_code);
    py::array xa = as_array(x_obj, "x");
    if (xa.ndim() != 3)
      throw py::value_error("x: expected a 3-D array (T, B, I), got shape " +
                            shape_str(shape_of(xa)));
    const int64_t T = xa.shape(0), B = xa.shape(1), I = xa.shape(2);
    if (T < 1 || B < 1 || I < 1)
      throw py::value_error("x: expected T, B, I >= 1, got shape " + shape_str(shape_of(xa)));
    py::array wh = as_array(w_hh_obj, "weight_hh");
    const int64_t G = fastrnn::num_gates(cell);
    if (wh.ndim() != 2 || wh.shape(0) < G || wh.shape(0) % G != 0 || wh.shape(1) < 1)
      throw py::value_error("weight_hh: expected a 2-D array (G*H, R) with G = " +
                            std::to_string(G) + " gates, got shape " + shape_str(shape_of(wh)));
    // H comes from weight_hh's rows; R (the state size) from its columns: R = H, or the
    // projection size P with weight_hr (P, H) for an LSTM.
    const int64_t H = wh.shape(0) / G, R = wh.shape(1);
    int64_t P = 0;
    if (!w_hr_obj.is_none()) {
      if (cell != Cell::Lstm)
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
    if (fastrnn::has_cell_state(cell)) {
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

  fastrnn::ForwardArgs<scalar_t> args() const {
    fastrnn::ForwardArgs<scalar_t> a{};
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
    return a;
  }
};

template <typename scalar_t>
scalar_t* out_ptr(py::array_t<scalar_t>& a) { return a.mutable_data(); }

// A number from a file: the first word, or the word after `key`; -1 if absent or not a number.
double read_number(const char* path, const char* key) {
  std::ifstream in(path);
  std::string word;
  while (in >> word) {
    if (key == nullptr || word == key) {
      double v = 0;
      if (key != nullptr && !(in >> word)) return -1;
      try { v = std::stod(word); } catch (...) { return -1; }  // "max": no limit
      return key != nullptr ? v * 1024 : v;                     // MemAvailable is in kB
    }
  }
  return -1;
}

// The memory this process can hope to get, in bytes: the least of physical memory and the
// cgroup (container) limit, read once; for large requests also the kernel's current
// MemAvailable estimate (read per call, but only then: it costs ~20 us).
double usable_memory_bytes(double request) {
  static const double limit = [] {
    double best = std::numeric_limits<double>::infinity();
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages > 0 && page > 0) best = static_cast<double>(pages) * static_cast<double>(page);
    for (double v : {read_number("/sys/fs/cgroup/memory.max", nullptr),
                     read_number("/sys/fs/cgroup/memory/memory.limit_in_bytes", nullptr)})
      if (v > 0 && v < best) best = v;
    return best;
  }();
  if (request < limit / 8) return limit;
  const double available = read_number("/proc/meminfo", "MemAvailable:");
  return available > 0 && available < limit ? available : limit;
}

// Refuses, before anything is allocated, a call whose memory (outputs, saved state, scratch)
// exceeds what the process can get: Linux overcommits, so such a call would otherwise be
// killed part-way instead of raising.
void check_fits_in_memory(double elements, size_t element_bytes) {
  const double bytes = elements * static_cast<double>(element_bytes);
  const double usable = usable_memory_bytes(bytes);
  if (bytes > usable) {
    std::ostringstream msg;
    msg << "fastrnn: this call needs " << bytes / (1 << 30) << " GiB (outputs, saved state and "
        << "workspace), more than the " << usable / (1 << 30) << " GiB of memory available";
    throw OutOfMemory(msg.str());
  }
}

// Uninitialised scratch (the kernels write every element before reading it), 64-byte aligned
// (layer_impl.h aligns the regions inside it), kept per thread from one call to the next: a fresh
// multi-megabyte allocation is mapped anew by the OS on every call, and its page faults cost ~5%
// of an LSTM forward at T=150, B=64, H=256. Scratch above kMaxCachedScratch is freed after its
// call.
class Scratch {
 public:
  template <typename scalar_t>
  static Scratch of(int64_t elements) {
    constexpr size_t kMaxCachedScratch = size_t(1) << 30;
    const size_t bytes = std::max<size_t>(64, static_cast<size_t>(elements) * sizeof(scalar_t));
    thread_local Buffer cached;
    thread_local size_t cached_bytes = 0;
    Scratch out;
    if (bytes > kMaxCachedScratch) {
      out.owned_ = allocate(bytes);
      out.data_ = out.owned_.get();
    } else {
      if (bytes > cached_bytes) {
        cached.reset();  // free before allocating the larger one
        cached = allocate(bytes);
        cached_bytes = bytes;
      }
      out.data_ = cached.get();
    }
    return out;
  }
  template <typename scalar_t>
  scalar_t* get() const { return reinterpret_cast<scalar_t*>(data_); }

 private:
  struct Free {
    void operator()(void* p) const { std::free(p); }
  };
  using Buffer = std::unique_ptr<unsigned char, Free>;
  static Buffer allocate(size_t bytes) {
    void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (p == nullptr) throw std::bad_alloc();
    return Buffer(static_cast<unsigned char*>(p));
  }
  Buffer owned_;
  unsigned char* data_ = nullptr;
};

// Allocates an uninitialised C-contiguous array; sizes were validated so this cannot overflow
// silently (numpy raises MemoryError / ValueError itself when it cannot allocate).
template <typename scalar_t>
py::array_t<scalar_t> empty(const std::vector<int64_t>& dims) {
  return py::array_t<scalar_t>(std::vector<py::ssize_t>(dims.begin(), dims.end()));
}

template <typename scalar_t>
py::tuple forward_typed(int cell, const py::object& x, const py::object& h0, const py::object& c0,
                        const py::object& w_ih, const py::object& w_hh, const py::object& b_ih,
                        const py::object& b_hh, const py::object& w_hr, const py::object& lengths, bool reverse,
                        bool training) {
  LayerInputs<scalar_t> in(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse);
  const LayerShape& s = in.shape;
  const int64_t ws_elements = fastrnn::forward_workspace_elements(s, training);
  check_fits_in_memory(static_cast<double>(s.T) * s.B * s.R() + 2.0 * s.B * s.H + ws_elements +
                           (training ? static_cast<double>(fastrnn::reserve_elements(s)) : 0.0),
                       sizeof(scalar_t));
  auto y = empty<scalar_t>({s.T, s.B, s.R()});
  auto h_n = empty<scalar_t>({s.B, s.R()});
  std::optional<py::array_t<scalar_t>> c_n, reserve;
  if (fastrnn::has_cell_state(s.cell)) c_n = empty<scalar_t>({s.B, s.H});
  if (training) reserve = empty<scalar_t>({fastrnn::reserve_elements(s)});
  const Scratch workspace = Scratch::of<scalar_t>(ws_elements);

  fastrnn::ForwardArgs<scalar_t> a = in.args();
  a.y = out_ptr(y);
  a.h_n = out_ptr(h_n);
  a.c_n = c_n ? out_ptr(*c_n) : nullptr;
  a.reserve = reserve ? out_ptr(*reserve) : nullptr;
  a.workspace = workspace.get<scalar_t>();
  {
    py::gil_scoped_release release;
    fastrnn::layer_forward<scalar_t>(a);
  }
  py::object c_n_obj = c_n ? py::object(*c_n) : py::none();
  py::object reserve_obj = reserve ? py::object(*reserve) : py::none();
  return py::make_tuple(y, h_n, c_n_obj, reserve_obj);
}

template <typename scalar_t>
py::tuple backward_typed(int cell, const py::object& x, const py::object& h0,
                         const py::object& c0, const py::object& w_ih, const py::object& w_hh,
                         const py::object& b_ih, const py::object& b_hh, const py::object& w_hr,
                         const py::object& lengths, bool reverse, const py::object& reserve_obj,
                         const py::object& dy_obj, const py::object& dh_n_obj,
                         const py::object& dc_n_obj) {
  LayerInputs<scalar_t> in(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse);
  const LayerShape& s = in.shape;
  const bool lstm = fastrnn::has_cell_state(s.cell);
  py::array reserve = checked<scalar_t>(reserve_obj, "reserve", {fastrnn::reserve_elements(s)});
  py::array dy = checked<scalar_t>(dy_obj, "dy", {s.T, s.B, s.R()});
  std::optional<py::array> dh_n, dc_n;
  if (!dh_n_obj.is_none()) dh_n = checked<scalar_t>(dh_n_obj, "dh_n", {s.B, s.R()});
  if (!dc_n_obj.is_none()) {
    if (!lstm) throw py::value_error("dc_n: only an LSTM layer has a cell state; expected None");
    dc_n = checked<scalar_t>(dc_n_obj, "dc_n", {s.B, s.H});
  }
  const int64_t GH = s.gate_width();
  const int64_t ws_elements = fastrnn::backward_workspace_elements(s);
  check_fits_in_memory(static_cast<double>(s.T) * s.B * s.I + 2.0 * s.B * s.H +
                           static_cast<double>(GH) * (s.I + s.R() + 2) + s.P * s.H + ws_elements,
                       sizeof(scalar_t));
  auto dx = empty<scalar_t>({s.T, s.B, s.I});
  auto dh0 = empty<scalar_t>({s.B, s.R()});
  auto dw_ih = empty<scalar_t>({GH, s.I});
  auto dw_hh = empty<scalar_t>({GH, s.R()});
  std::optional<py::array_t<scalar_t>> dc0, db_ih, db_hh, dw_hr;
  if (s.P > 0) dw_hr = empty<scalar_t>({s.P, s.H});
  if (lstm) dc0 = empty<scalar_t>({s.B, s.H});
  if (in.b_ih) {
    db_ih = empty<scalar_t>({GH});
    db_hh = empty<scalar_t>({GH});
  }
  const Scratch workspace = Scratch::of<scalar_t>(ws_elements);

  fastrnn::BackwardArgs<scalar_t> a{};
  static_cast<fastrnn::ForwardArgs<scalar_t>&>(a) = in.args();
  // The reserve is read-only in backward; the struct shares the forward's pointer type.
  a.reserve = const_cast<scalar_t*>(static_cast<const scalar_t*>(reserve.data()));
  a.workspace = workspace.get<scalar_t>();
  a.dy = static_cast<const scalar_t*>(dy.data());
  a.dh_n = in_ptr<scalar_t>(dh_n);
  a.dc_n = in_ptr<scalar_t>(dc_n);
  a.dx = out_ptr(dx);
  a.dh0 = out_ptr(dh0);
  a.dc0 = dc0 ? out_ptr(*dc0) : nullptr;
  a.dw_ih = out_ptr(dw_ih);
  a.dw_hh = out_ptr(dw_hh);
  a.db_ih = db_ih ? out_ptr(*db_ih) : nullptr;
  a.db_hh = db_hh ? out_ptr(*db_hh) : nullptr;
  a.dw_hr = dw_hr ? out_ptr(*dw_hr) : nullptr;
  {
    py::gil_scoped_release release;
    fastrnn::layer_backward<scalar_t>(a);
  }
  auto opt = [](const std::optional<py::array_t<scalar_t>>& v) {
    return v ? py::object(*v) : py::object(py::none());
  };
  return py::make_tuple(dx, dh0, opt(dc0), dw_ih, dw_hh, opt(db_ih), opt(db_hh), opt(dw_hr));
}

// Dtype dispatch: the dtype of x decides; every other array must match it.
py::dtype dtype_of_x(const py::object& x) { return as_array(x, "x").dtype(); }

[[noreturn]] void unsupported_dtype(const py::dtype& dt) {
  throw DtypeError("x: expected dtype float32 or float64, got " + std::string(py::str(dt)));
}

py::tuple layer_forward(int cell, const py::object& x, const py::object& h0, const py::object& c0,
                        const py::object& w_ih, const py::object& w_hh, const py::object& b_ih,
                        const py::object& b_hh, const py::object& w_hr, const py::object& lengths, bool reverse,
                        bool training) {
  py::dtype dt = dtype_of_x(x);
  if (dt.equal(py::dtype::of<float>()))
    return forward_typed<float>(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, training);
  if (dt.equal(py::dtype::of<double>()))
    return forward_typed<double>(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, training);
  unsupported_dtype(dt);
}

py::tuple layer_backward(int cell, const py::object& x, const py::object& h0, const py::object& c0,
                         const py::object& w_ih, const py::object& w_hh, const py::object& b_ih,
                         const py::object& b_hh, const py::object& w_hr, const py::object& lengths, bool reverse,
                         const py::object& reserve, const py::object& dy, const py::object& dh_n,
                         const py::object& dc_n) {
  py::dtype dt = dtype_of_x(x);
  if (dt.equal(py::dtype::of<float>()))
    return backward_typed<float>(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse,
                                 reserve, dy, dh_n, dc_n);
  if (dt.equal(py::dtype::of<double>()))
    return backward_typed<double>(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse,
                                  reserve, dy, dh_n, dc_n);
  unsupported_dtype(dt);
}

template <typename scalar_t>
py::array activation_typed(fastrnn::Activation kind, const py::array& x) {
  py::array in = checked<scalar_t>(x, "x", shape_of(x));
  auto out = py::array_t<scalar_t>(std::vector<py::ssize_t>(in.shape(), in.shape() + in.ndim()));
  const scalar_t* src = static_cast<const scalar_t*>(in.data());
  scalar_t* dst = out.mutable_data();
  const int64_t n = in.size();
  {
    py::gil_scoped_release release;
    fastrnn::apply_activation<scalar_t>(kind, src, dst, n);
  }
  return out;
}

py::array activation(const std::string& kind, const py::object& x_obj) {
  fastrnn::Activation k;
  if (kind == "sigmoid") k = fastrnn::Activation::Sigmoid;
  else if (kind == "tanh") k = fastrnn::Activation::Tanh;
  else throw py::value_error("kind: expected 'sigmoid' or 'tanh', got '" + kind + "'");
  py::array x = as_array(x_obj, "x");
  if (x.dtype().equal(py::dtype::of<float>())) return activation_typed<float>(k, x);
  if (x.dtype().equal(py::dtype::of<double>())) return activation_typed<double>(k, x);
  unsupported_dtype(x.dtype());
}

// The shape of a size query, validated so that no size computed from it overflows.
LayerShape size_query(int cell, int64_t T, int64_t B, int64_t I, int64_t H, int64_t P) {
  const int64_t limit = int64_t(1) << 31;  // keeps every product below 2^63
  for (auto [name, v] : {std::pair<const char*, int64_t>{"T", T}, {"B", B}, {"I", I}, {"H", H}})
    if (v < 1 || v >= limit)
      throw py::value_error(std::string(name) + ": expected 1 <= " + name + " < 2^31, got " +
                            std::to_string(v));
  if (P < 0 || P >= H || (P > 0 && cell != static_cast<int>(Cell::Lstm)))
    throw py::value_error("P: expected 0 (or 0 < P < H for an LSTM), got " + std::to_string(P));
  // The largest buffers hold at most 8 values per step, row and hidden unit (T*B*(4H + 4H)).
  if (static_cast<double>(T + 1) * B * 8 * (H + I) >= 9.2e18)
    throw py::value_error("T, B, I, H: the sizes overflow 64-bit integers");
  return LayerShape{cell_from(cell), T, B, I, H, false, P};
}

int64_t reserve_size(int cell, int64_t T, int64_t B, int64_t I, int64_t H, int64_t P) {
  return fastrnn::reserve_elements(size_query(cell, T, B, I, H, P));
}

// Scratch of one call, in elements: (training forward, inference forward, backward).
std::tuple<int64_t, int64_t, int64_t> workspace_sizes(int cell, int64_t T, int64_t B, int64_t I,
                                                      int64_t H, int64_t P) {
  const LayerShape s = size_query(cell, T, B, I, H, P);
  return {fastrnn::forward_workspace_elements(s, true),
          fastrnn::forward_workspace_elements(s, false), fastrnn::backward_workspace_elements(s)};
}

// Reserve row widths (see fastrnn.h): reserve_size == (T+1)*B*per_slot + T*B*per_step.
std::pair<int64_t, int64_t> reserve_widths(int cell, int64_t H, int64_t P) {
  if (H < 1) throw py::value_error("H: expected H >= 1, got " + std::to_string(H));
  if (P < 0 || P >= H || (P > 0 && cell != static_cast<int>(Cell::Lstm)))
    throw py::value_error("P: expected 0 (or 0 < P < H for an LSTM), got " + std::to_string(P));
  const auto w = fastrnn::reserve_widths(LayerShape{cell_from(cell), 1, 1, 1, H, false, P});
  return {w.per_slot, w.per_step};
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  // One thread count for the kernels and the BLAS library from the start (OMP_NUM_THREADS, else
  // the CPUs this process may use), whatever OpenBLAS read from its own variables.
  fastrnn::set_num_threads(fastrnn::get_num_threads());
  m.doc() = "fastrnn native core: fused recurrent layers (see fastrnn.functional for the API)";

  // The exception types live in Python (fastrnn/errors.py) so both layers raise the same ones.
  py::module_ errors = py::module_::import("fastrnn.errors");
  // Released handles: kept alive for the life of the process (no destructor after finalize).
  static py::handle lengths_error = py::object(errors.attr("LengthsError")).release();
  static py::handle dtype_error = py::object(errors.attr("DtypeError")).release();
  m.attr("LengthsError") = lengths_error;
  m.attr("DtypeError") = dtype_error;
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const LengthsError& e) {
      PyErr_SetString(lengths_error.ptr(), e.what());
    } catch (const DtypeError& e) {
      PyErr_SetString(dtype_error.ptr(), e.what());
    } catch (const OutOfMemory& e) {
      PyErr_SetString(PyExc_MemoryError, e.what());
    } catch (const std::length_error& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });

  m.def("layer_forward", &layer_forward, py::arg("cell"), py::arg("x"), py::arg("h0"),
        py::arg("c0"), py::arg("weight_ih"), py::arg("weight_hh"), py::arg("bias_ih"),
        py::arg("bias_hh"), py::arg("weight_hr"), py::arg("lengths"),
        py::arg("reverse").noconvert(), py::arg("training").noconvert(),
        "One layer, one direction: returns (y, h_n, c_n or None, reserve or None).");
  m.def("layer_backward", &layer_backward, py::arg("cell"), py::arg("x"), py::arg("h0"),
        py::arg("c0"), py::arg("weight_ih"), py::arg("weight_hh"), py::arg("bias_ih"),
        py::arg("bias_hh"), py::arg("weight_hr"), py::arg("lengths"),
        py::arg("reverse").noconvert(), py::arg("reserve"),
        py::arg("dy"), py::arg("dh_n"), py::arg("dc_n"),
        "BPTT for one layer and direction: returns (dx, dh0, dc0, dweight_ih, dweight_hh, "
        "dbias_ih, dbias_hh, dweight_hr); absent items are None.");
  m.def("reserve_size", &reserve_size, py::arg("cell"), py::arg("T"), py::arg("B"), py::arg("I"),
        py::arg("H"), py::arg("P") = 0, "Elements a training forward saves for backward.");
  m.def("workspace_sizes", &workspace_sizes, py::arg("cell"), py::arg("T"), py::arg("B"),
        py::arg("I"), py::arg("H"), py::arg("P") = 0,
        "Scratch elements of one call: (training forward, inference forward, backward).");
  m.def("reserve_widths", &reserve_widths, py::arg("cell"), py::arg("H"), py::arg("P") = 0,
        "(per_slot, per_step): reserve_size == (T+1)*B*per_slot + T*B*per_step.");
  m.def("set_num_threads", &fastrnn::set_num_threads, py::arg("n"));
  m.def("run_threads_on_openmp", &fastrnn::run_threads_on_openmp, py::arg("library_path"),
        "Run fastrnn's parallel work (kernel teams and BLAS jobs) on an already-loaded OpenMP "
        "runtime (path), or on fastrnn's own threads (\"\").");
  m.def("thread_pool", &fastrnn::thread_pool);
  m.def("get_num_threads", &fastrnn::get_num_threads);
  m.def("set_deterministic", &fastrnn::set_deterministic, py::arg("enabled"),
        "Results bitwise identical for any thread count (BLAS products in a fixed grid).");
  m.def("get_deterministic", &fastrnn::get_deterministic);
  m.def("blas_name", &fastrnn::blas_name);
  m.def("blas_config", &fastrnn::blas_config);
  m.def("compiler", &fastrnn::compiler_name);
  m.def("active_isa", &fastrnn::active_isa,
        "Instruction set the pointwise kernels use on this CPU (FASTRNN_ISA can lower it).");
  m.def("compiled_isas", &fastrnn::compiled_isas, "Instruction sets compiled into this build.");
  m.def(
      "measure_gemm_gflops",
      [](const std::string& dtype, int64_t n, int reps) {
        if (dtype != "float32" && dtype != "float64")
          throw py::value_error("dtype: expected 'float32' or 'float64', got '" + dtype + "'");
        py::gil_scoped_release release;
        return fastrnn::measure_gemm_gflops(dtype == "float64", n, reps);
      },
      py::arg("dtype"), py::arg("n"), py::arg("reps"),
      "Best GFLOP/s of an n x n x n GEMM through fastrnn's BLAS, current threads.");
  m.def(
      "measure_read_gbs",
      [](int64_t nbytes, int reps) {
        py::gil_scoped_release release;
        return fastrnn::measure_read_gbs(nbytes, reps);
      },
      py::arg("nbytes"), py::arg("reps"),
      "Best GB/s of fastrnn's threads re-reading a buffer of nbytes (each its own slice).");
  m.def("activation", &activation, py::arg("kind"), py::arg("x"),
        "Applies the kernels' vectorised 'sigmoid' or 'tanh' to a float32/float64 array "
        "(for accuracy tests).");
}
