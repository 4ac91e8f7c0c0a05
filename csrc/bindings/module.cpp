// fastrnn._core: the one Python extension module of the CPU core. Each call checks its arguments
// (args.h), refuses what cannot fit in memory (memory.h), allocates its outputs, takes its
// workspace (scratch.h), releases the GIL around the native work, and C++ errors become Python
// exceptions that name the argument.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "bindings/args.h"
#ifdef FASTRNN_JAX_FFI
#include "bindings/jax_ffi.h"
#endif
#include "bindings/memory.h"
#include "bindings/scratch.h"
#include "common/dispatch.h"
#include "fastrnn/fastrnn.h"

namespace py = pybind11;

namespace fastrnn::bindings {

namespace {

template <typename scalar_t>
scalar_t* out_ptr(py::array_t<scalar_t>& a) { return a.mutable_data(); }

template <typename scalar_t>
scalar_t* out_ptr(std::optional<py::array_t<scalar_t>>& a) { return a ? a->mutable_data() : nullptr; }

template <typename scalar_t>
py::object or_none(const std::optional<py::array_t<scalar_t>>& a) {
  return a ? py::object(*a) : py::object(py::none());
}

// Allocates an uninitialised C-contiguous array; sizes were validated so this cannot overflow
// silently (numpy raises MemoryError / ValueError itself when it cannot allocate).
template <typename scalar_t>
py::array_t<scalar_t> empty(const std::vector<int64_t>& dims) {
  return py::array_t<scalar_t>(std::vector<py::ssize_t>(dims.begin(), dims.end()));
}

template <typename scalar_t>
py::tuple forward_typed(int cell, const py::object& x, const py::object& h0, const py::object& c0,
                        const py::object& w_ih, const py::object& w_hh, const py::object& b_ih,
                        const py::object& b_hh, const py::object& w_hr, const py::object& lengths,
                        bool reverse, bool training, const py::object& resets) {
  LayerInputs<scalar_t> in(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse,
                           resets);
  const LayerShape& s = in.shape;
  const int64_t ws_elements = forward_workspace_elements(s, training);
  check_fits_in_memory(static_cast<double>(s.T) * s.B * s.R() + 2.0 * s.B * s.H + ws_elements +
                           (training ? static_cast<double>(reserve_elements(s)) : 0.0),
                       sizeof(scalar_t));
  auto y = empty<scalar_t>({s.T, s.B, s.R()});
  auto h_n = empty<scalar_t>({s.B, s.R()});
  std::optional<py::array_t<scalar_t>> c_n, reserve;
  if (has_cell_state(s.cell)) c_n = empty<scalar_t>({s.B, s.H});
  if (training) reserve = empty<scalar_t>({reserve_elements(s)});
  const Scratch workspace = Scratch::of<scalar_t>(ws_elements);

  ForwardArgs<scalar_t> a = in.args();
  a.y = out_ptr(y);
  a.h_n = out_ptr(h_n);
  a.c_n = out_ptr(c_n);
  a.reserve = out_ptr(reserve);
  a.workspace = workspace.get<scalar_t>();
  {
    py::gil_scoped_release release;
    fastrnn::layer_forward<scalar_t>(a);
  }
  return py::make_tuple(y, h_n, or_none(c_n), or_none(reserve));
}

template <typename scalar_t>
py::tuple backward_typed(int cell, const py::object& x, const py::object& h0,
                         const py::object& c0, const py::object& w_ih, const py::object& w_hh,
                         const py::object& b_ih, const py::object& b_hh, const py::object& w_hr,
                         const py::object& lengths, bool reverse, const py::object& reserve_obj,
                         const py::object& dy_obj, const py::object& dh_n_obj,
                         const py::object& dc_n_obj, bool gate_grads, const py::object& resets) {
  LayerInputs<scalar_t> in(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse,
                           resets);
  const LayerShape& s = in.shape;
  const GradInputs<scalar_t> grads(s, reserve_obj, dy_obj, dh_n_obj, dc_n_obj);
  const int64_t GH = s.gate_width();
  const int64_t ws_elements = backward_workspace_elements(s);
  check_fits_in_memory(static_cast<double>(s.T) * s.B * s.I + 2.0 * s.B * s.H +
                           static_cast<double>(GH) * (s.I + s.R() + 2) + s.P * s.H + ws_elements,
                       sizeof(scalar_t));
  auto dx = empty<scalar_t>({s.T, s.B, s.I});
  auto dh0 = empty<scalar_t>({s.B, s.R()});
  std::optional<py::array_t<scalar_t>> dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr;
  std::optional<py::array_t<scalar_t>> dgates, dgates_h, dh_proj;  // gate_grads instead
  if (has_cell_state(s.cell)) dc0 = empty<scalar_t>({s.B, s.H});
  if (gate_grads) {
    dgates = empty<scalar_t>({s.T, s.B, GH});
    if (scales_recurrent_gate(s.cell)) dgates_h = empty<scalar_t>({s.T, s.B, s.H});
    if (s.P > 0) dh_proj = empty<scalar_t>({s.T, s.B, s.R()});
  } else {
    dw_ih = empty<scalar_t>({GH, s.I});
    dw_hh = empty<scalar_t>({GH, s.R()});
    if (s.P > 0) dw_hr = empty<scalar_t>({s.P, s.H});
    if (in.b_ih) {
      db_ih = empty<scalar_t>({GH});
      db_hh = empty<scalar_t>({GH});
    }
  }
  const Scratch workspace = Scratch::of<scalar_t>(ws_elements);

  BackwardArgs<scalar_t> a{};
  static_cast<ForwardArgs<scalar_t>&>(a) = in.args();
  // The reserve is read-only in backward; the struct shares the forward's pointer type.
  a.reserve = const_cast<scalar_t*>(static_cast<const scalar_t*>(grads.reserve.data()));
  a.workspace = workspace.get<scalar_t>();
  a.dy = static_cast<const scalar_t*>(grads.dy.data());
  a.dh_n = grads.dh_n ? static_cast<const scalar_t*>(grads.dh_n->data()) : nullptr;
  a.dc_n = grads.dc_n ? static_cast<const scalar_t*>(grads.dc_n->data()) : nullptr;
  a.dx = out_ptr(dx);
  a.dh0 = out_ptr(dh0);
  a.dc0 = out_ptr(dc0);
  a.dw_ih = out_ptr(dw_ih);
  a.dw_hh = out_ptr(dw_hh);
  a.db_ih = out_ptr(db_ih);
  a.db_hh = out_ptr(db_hh);
  a.dw_hr = out_ptr(dw_hr);
  a.dgates = out_ptr(dgates);
  a.dgates_h = out_ptr(dgates_h);
  a.dh_proj = out_ptr(dh_proj);
  {
    py::gil_scoped_release release;
    fastrnn::layer_backward<scalar_t>(a);
  }
  if (gate_grads)
    return py::make_tuple(dx, dh0, or_none(dc0), *dgates, or_none(dgates_h), or_none(dh_proj));
  return py::make_tuple(dx, dh0, or_none(dc0), *dw_ih, *dw_hh, or_none(db_ih), or_none(db_hh),
                        or_none(dw_hr));
}

// The dtype of x decides; every other array must match it (LayerInputs checks them).
py::tuple layer_forward(int cell, const py::object& x, const py::object& h0, const py::object& c0,
                        const py::object& w_ih, const py::object& w_hh, const py::object& b_ih,
                        const py::object& b_hh, const py::object& w_hr, const py::object& lengths,
                        bool reverse, bool training, const py::object& resets) {
  return dispatch_dtype(as_array(x, "x").dtype(), "x", [&](auto type) {
    using scalar_t = typename decltype(type)::type;
    return forward_typed<scalar_t>(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths,
                                   reverse, training, resets);
  });
}

py::tuple layer_backward(int cell, const py::object& x, const py::object& h0, const py::object& c0,
                         const py::object& w_ih, const py::object& w_hh, const py::object& b_ih,
                         const py::object& b_hh, const py::object& w_hr, const py::object& lengths,
                         bool reverse, const py::object& reserve, const py::object& dy,
                         const py::object& dh_n, const py::object& dc_n, bool gate_grads,
                         const py::object& resets) {
  return dispatch_dtype(as_array(x, "x").dtype(), "x", [&](auto type) {
    using scalar_t = typename decltype(type)::type;
    return backward_typed<scalar_t>(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths,
                                    reverse, reserve, dy, dh_n, dc_n, gate_grads, resets);
  });
}

py::array activation(const std::string& kind, const py::object& x_obj) {
  const Activation k = activation_kind(kind);
  const py::array x = as_array(x_obj, "x");
  return dispatch_dtype(x.dtype(), "x", [&](auto type) -> py::array {
    using scalar_t = typename decltype(type)::type;
    py::array in = checked<scalar_t>(x, "x", shape_of(x));
    auto out = py::array_t<scalar_t>(std::vector<py::ssize_t>(in.shape(), in.shape() + in.ndim()));
    const scalar_t* src = static_cast<const scalar_t*>(in.data());
    scalar_t* dst = out.mutable_data();
    const int64_t n = in.size();
    {
      py::gil_scoped_release release;
      apply_activation<scalar_t>(k, src, dst, n);
    }
    return out;
  });
}

int64_t reserve_size(int cell, int64_t T, int64_t B, int64_t I, int64_t H, int64_t P) {
  return reserve_elements(size_query(cell, T, B, I, H, P));
}

// Scratch of one call, in elements: (training forward, inference forward, backward).
std::tuple<int64_t, int64_t, int64_t> workspace_sizes(int cell, int64_t T, int64_t B, int64_t I,
                                                      int64_t H, int64_t P) {
  const LayerShape s = size_query(cell, T, B, I, H, P);
  return {forward_workspace_elements(s, true), forward_workspace_elements(s, false),
          backward_workspace_elements(s)};
}

// Reserve row widths (see fastrnn.h): reserve_size == (T+1)*B*per_slot + T*B*per_step.
std::pair<int64_t, int64_t> reserve_row_widths(int cell, int64_t H, int64_t P) {
  const ReserveWidths w = fastrnn::reserve_widths(widths_query(cell, H, P));
  return {w.per_slot, w.per_step};
}

// {name: code} for every cell, from the C++ list of cells (fastrnn/cell.h).
py::dict cell_codes() {
  py::dict codes;
#define FASTRNN_CELL_CODE(name) codes[CellInfo<Cell::name>::kName] = static_cast<int>(Cell::name);
  FASTRNN_CELLS(FASTRNN_CELL_CODE)
#undef FASTRNN_CELL_CODE
  return codes;
}

}  // namespace

}  // namespace fastrnn::bindings

PYBIND11_MODULE(_core, m) {
  namespace b = fastrnn::bindings;
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
    } catch (const b::LengthsError& e) {
      PyErr_SetString(lengths_error.ptr(), e.what());
    } catch (const b::DtypeError& e) {
      PyErr_SetString(dtype_error.ptr(), e.what());
    } catch (const b::OutOfMemory& e) {
      PyErr_SetString(PyExc_MemoryError, e.what());
    } catch (const std::length_error& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });

  m.attr("CELL_CODES") = b::cell_codes();
  m.def("layer_forward", &b::layer_forward, py::arg("cell"), py::arg("x"), py::arg("h0"),
        py::arg("c0"), py::arg("weight_ih"), py::arg("weight_hh"), py::arg("bias_ih"),
        py::arg("bias_hh"), py::arg("weight_hr"), py::arg("lengths"),
        py::arg("reverse").noconvert(), py::arg("training").noconvert(),
        py::arg("resets") = py::none(),
        "One layer, one direction: returns (y, h_n, c_n or None, reserve or None). resets: "
        "None or a bool array (T, B); a reset at (t, b) starts sequence b afresh at step t.");
  m.def("layer_backward", &b::layer_backward, py::arg("cell"), py::arg("x"), py::arg("h0"),
        py::arg("c0"), py::arg("weight_ih"), py::arg("weight_hh"), py::arg("bias_ih"),
        py::arg("bias_hh"), py::arg("weight_hr"), py::arg("lengths"),
        py::arg("reverse").noconvert(), py::arg("reserve"),
        py::arg("dy"), py::arg("dh_n"), py::arg("dc_n"),
        py::arg("gate_grads").noconvert() = false, py::arg("resets") = py::none(),
        "BPTT for one layer and direction: returns (dx, dh0, dc0, dweight_ih, dweight_hh, "
        "dbias_ih, dbias_hh, dweight_hr); absent items are None. With gate_grads=True, "
        "(dx, dh0, dc0, dgates (T,B,G*H), dgates_h (T,B,H) or None, dh_proj (T,B,R) or None): "
        "the factors of the weight gradients instead of them (BackwardArgs::dgates). resets: "
        "as given to layer_forward.");
  m.def("reserve_size", &b::reserve_size, py::arg("cell"), py::arg("T"), py::arg("B"),
        py::arg("I"), py::arg("H"), py::arg("P") = 0,
        "Elements a training forward saves for backward.");
  m.def("workspace_sizes", &b::workspace_sizes, py::arg("cell"), py::arg("T"), py::arg("B"),
        py::arg("I"), py::arg("H"), py::arg("P") = 0,
        "Scratch elements of one call: (training forward, inference forward, backward).");
  m.def("reserve_widths", &b::reserve_row_widths, py::arg("cell"), py::arg("H"), py::arg("P") = 0,
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
        const bool float64 = b::measure_dtype_is_float64(dtype);
        py::gil_scoped_release release;
        return fastrnn::measure_gemm_gflops(float64, n, reps);
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
  m.def("activation", &b::activation, py::arg("kind"), py::arg("x"),
        "Applies the kernels' vectorised 'sigmoid' or 'tanh' to a float32/float64 array "
        "(for accuracy tests).");
#ifdef FASTRNN_JAX_FFI
  b::add_jax_ffi(m);  // fastrnn.jax's custom calls
#endif
}
