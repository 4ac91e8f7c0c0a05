// fastrnn._core's argument checks, all in one place: every array and number the extension takes
// is checked here (type, dtype, C-contiguity, alignment, shape, value ranges) before anything is
// allocated, and every message names the argument it is about ("x: expected ..."). The Python
// side's own checks are python/fastrnn/_validate.py; tests/api/test_validation.py and
// tests/api/test_fuzz.py hold both to their messages.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "common/dispatch.h"
#include "fastrnn/fastrnn.h"

namespace fastrnn::bindings {

namespace py = pybind11;

// Raised as fastrnn.LengthsError, a subclass of both ValueError and IndexError.
struct LengthsError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// Raised as fastrnn.DtypeError (a TypeError).
struct DtypeError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// "(2, 3)", "(5,)".
std::string shape_str(const std::vector<int64_t>& dims);
std::vector<int64_t> shape_of(const py::array& a);

// obj as an array, or TypeError naming it.
py::array as_array(const py::object& obj, const char* name);

// Checks type, dtype, contiguity, alignment and shape of one array argument.
template <typename scalar_t>
py::array checked(const py::object& obj, const char* name, const std::vector<int64_t>& expected);

// The cell of a code, or ValueError listing the codes.
Cell cell_from(int code);

// The dtypes the CPU core is built for (cpu/layer_f32.cpp, layer_f64.cpp): X(type, name).
#define FASTRNN_CPU_DTYPES(X) X(float, "float32") X(double, "float64")

// "float32 or float64": the dtypes above, for messages.
std::string cpu_dtype_names();

// fn(TypeTag<scalar_t>{}) for the scalar type of `dtype`; any other dtype raises DtypeError naming
// the argument `name` ("x": the dtype of x decides, every other array must match it).
template <typename Fn>
decltype(auto) dispatch_dtype(const py::dtype& dtype, const char* name, Fn&& fn) {
#define FASTRNN_CPU_DTYPE_CASE(type, type_name) \
  if (dtype.equal(py::dtype::of<type>())) return std::forward<Fn>(fn)(TypeTag<type>{});
  FASTRNN_CPU_DTYPES(FASTRNN_CPU_DTYPE_CASE)
#undef FASTRNN_CPU_DTYPE_CASE
  throw DtypeError(std::string(name) + ": expected dtype " + cpu_dtype_names() + ", got " +
                   std::string(py::str(dtype)));
}

// Everything a layer call reads, checked once. Forward and backward share it.
template <typename scalar_t>
struct LayerInputs {
  LayerShape shape;
  py::array x, h0, w_ih, w_hh;
  std::optional<py::array> c0, b_ih, b_hh, w_hr;
  std::vector<int64_t> lengths;  // empty when None
  std::vector<uint8_t> resets;   // (T, B), empty when None

  LayerInputs(int cell_code, const py::object& x_obj, const py::object& h0_obj,
              const py::object& c0_obj, const py::object& w_ih_obj, const py::object& w_hh_obj,
              const py::object& b_ih_obj, const py::object& b_hh_obj,
              const py::object& w_hr_obj, const py::object& lengths_obj, bool reverse,
              const py::object& resets_obj);

  // The core's arguments with the inputs filled in (outputs, reserve and workspace null).
  ForwardArgs<scalar_t> args() const;
};

// What backward reads besides the layer's inputs: the reserve and the outputs' gradients.
template <typename scalar_t>
struct GradInputs {
  py::array reserve, dy;
  std::optional<py::array> dh_n, dc_n;
  GradInputs(const LayerShape& s, const py::object& reserve_obj, const py::object& dy_obj,
             const py::object& dh_n_obj, const py::object& dc_n_obj);
};

// The shape of a size query (reserve_size, workspace_sizes), validated so that no size computed
// from it overflows.
LayerShape size_query(int cell, int64_t T, int64_t B, int64_t I, int64_t H, int64_t P);
// The shape of a reserve_widths query (T = B = I = 1).
LayerShape widths_query(int cell, int64_t H, int64_t P);

// activation()'s kind: "sigmoid" or "tanh".
Activation activation_kind(const std::string& kind);
// measure_gemm_gflops()'s dtype: "float32" (false) or "float64" (true).
bool measure_dtype_is_float64(const std::string& dtype);

}  // namespace fastrnn::bindings
