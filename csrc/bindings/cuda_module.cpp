// fastrnn._cuda: the CUDA backend's Python extension, a module of its own so that fastrnn imports
// and runs on the CPU where there is no GPU, no driver and no cuBLAS (python/fastrnn/cuda.py
// loads it only when a GPU is used). It takes device pointers as integers: the Python side
// (fastrnn/cuda.py) checks shapes, dtypes, devices and strides of the tensors or DLPack arrays
// and allocates every output, so this layer only converts, releases the GIL and maps errors.
// It also reads DLPack capsules (any producer: torch, CuPy, JAX) and exports fastrnn's own device
// arrays through DLPack.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "fastrnn/fastrnn_cuda.h"
#ifdef FASTRNN_JAX_FFI
#include "bindings/jax_ffi_cuda.h"
#endif
#ifdef FASTRNN_CUDA_HOST_EMULATION
#include "cuda/emulation/gemm_log.h"
#endif

namespace py = pybind11;
namespace fc = fastrnn::cuda;
using fastrnn::Cell;
using fastrnn::LayerShape;

// ---- DLPack: the ABI of dlpack.h (v0.8 / 1.x legacy capsule "dltensor"), declared from the
// specification ------------------------------------------------------------------------------
extern "C" {
struct DLDevice {
  int32_t device_type;  // 1 CPU, 2 CUDA, 3 CUDA host, 13 CUDA managed
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;  // 0 int, 1 uint, 2 float, 4 bfloat
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;  // in elements; nullptr = C-contiguous
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};
}

namespace {

constexpr int32_t kDLCUDA = 2;

py::tuple describe_dlpack(const py::capsule& capsule) {
  if (std::string(capsule.name() ? capsule.name() : "") != "dltensor")
    throw py::value_error("expected an unconsumed DLPack capsule named 'dltensor', got '" +
                          std::string(capsule.name() ? capsule.name() : "") + "'");
  auto* managed = capsule.get_pointer<DLManagedTensor>();
  const DLTensor& t = managed->dl_tensor;
  py::list shape, strides;
  for (int i = 0; i < t.ndim; ++i) shape.append(t.shape[i]);
  py::object strides_obj = py::none();
  if (t.strides) {
    for (int i = 0; i < t.ndim; ++i) strides.append(t.strides[i]);
    strides_obj = py::tuple(strides);
  }
  const uintptr_t data = reinterpret_cast<uintptr_t>(t.data) + t.byte_offset;
  return py::make_tuple(data, py::tuple(shape), strides_obj,
                        py::make_tuple(t.dtype.code, t.dtype.bits, t.dtype.lanes),
                        py::make_tuple(t.device.device_type, t.device.device_id));
}

// Device memory owned by fastrnn, exported through DLPack: the NumPy-level API's outputs when the
// inputs come from a library it cannot allocate with (anything but torch and CuPy).
class DeviceArray {
 public:
  // dtype codes: 0 float32, 1 float16, 2 bfloat16 (fastrnn_cuda.h's DType), 3 int64, 4 uint8
  DeviceArray(std::vector<int64_t> shape, int dtype, int device)
      : shape_(std::move(shape)), dtype_(dtype), device_(device) {
    if (dtype < 0 || dtype > 4)
      throw py::value_error("dtype: expected a code in 0..4, got " + std::to_string(dtype));
    int64_t n = 1;
    for (int64_t d : shape_) {
      if (d < 0) throw py::value_error("shape: expected sizes >= 0");
      n *= d;
    }
    nbytes_ = n * dl_dtype().bits / 8;
    data_ = device_alloc(device_, nbytes_);
  }
  ~DeviceArray() { device_free(device_, data_); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;

  uintptr_t data_ptr() const { return reinterpret_cast<uintptr_t>(data_); }
  const std::vector<int64_t>& shape() const { return shape_; }
  int dtype() const { return dtype_; }
  int device() const { return device_; }
  int64_t nbytes() const { return nbytes_; }

  static void* device_alloc(int device, int64_t bytes);
  static void device_free(int device, void* ptr);

  DLDataType dl_dtype() const {
    static constexpr DLDataType kTypes[] = {{2, 32, 1}, {2, 16, 1}, {4, 16, 1}, {0, 64, 1},
                                            {1, 8, 1}};
    return kTypes[dtype_];
  }

 private:
  std::vector<int64_t> shape_;
  int dtype_;
  int device_;
  int64_t nbytes_ = 0;
  void* data_ = nullptr;
};

// What a DLPack consumer holds: the Python DeviceArray (kept alive) and the shape it points to.
struct ExportContext {
  py::object owner;
  std::vector<int64_t> shape;
};

void delete_managed(DLManagedTensor* self) {
  auto* ctx = static_cast<ExportContext*>(self->manager_ctx);
  if (!Py_IsInitialized()) {  // a consumer freeing after interpreter shutdown: leak the context
    delete self;
    return;
  }
  {
    py::gil_scoped_acquire gil;
    delete ctx;
  }
  delete self;
}

py::capsule export_dlpack(py::object self_obj) {
  const DeviceArray& self = self_obj.cast<const DeviceArray&>();
  auto* ctx = new ExportContext{self_obj, self.shape()};
  auto* managed = new DLManagedTensor{};
  managed->dl_tensor.data = reinterpret_cast<void*>(self.data_ptr());
  managed->dl_tensor.device = {kDLCUDA, self.device()};
  managed->dl_tensor.ndim = static_cast<int32_t>(ctx->shape.size());
  managed->dl_tensor.dtype = self.dl_dtype();
  managed->dl_tensor.shape = ctx->shape.data();
  managed->dl_tensor.strides = nullptr;
  managed->dl_tensor.byte_offset = 0;
  managed->manager_ctx = ctx;
  managed->deleter = delete_managed;
  // An unconsumed capsule frees its tensor; a consumer renames it "used_dltensor" and calls the
  // deleter itself when done.
  return py::capsule(managed, "dltensor", [](PyObject* capsule) {
    if (PyCapsule_IsValid(capsule, "used_dltensor")) return;  // the consumer owns it now
    // Runs during garbage collection, maybe while an exception propagates: keep it intact.
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule, "dltensor"));
    if (m == nullptr) PyErr_WriteUnraisable(capsule);
    else if (m->deleter) m->deleter(m);
    PyErr_Restore(type, value, traceback);
  });
}

// ---- problems ----------------------------------------------------------------------------------

Cell cell_of(int code) {
  if (code < 0 || code > 3)
    throw py::value_error("cell: expected a code in 0..3, got " + std::to_string(code));
  return static_cast<Cell>(code);
}

fc::DType dtype_of(int code) {
  if (code < 0 || code > 2)
    throw py::value_error("dtype: expected a code in 0..2 (float32, float16, bfloat16), got " +
                          std::to_string(code));
  return static_cast<fc::DType>(code);
}

fc::Algo algo_of(int code) {
  if (code < 0 || code > 2)
    throw py::value_error("algo: expected a code in 0..2 (standard, persistent, auto), got " +
                          std::to_string(code));
  return static_cast<fc::Algo>(code);
}

LayerShape shape_of(int cell, int64_t T, int64_t B, int64_t I, int64_t H, int64_t P, bool reverse) {
  if (T < 1 || B < 1 || I < 1 || H < 1 || P < 0)
    throw py::value_error("sizes: expected T, B, I, H >= 1 and P >= 0");
  if (P > 0 && (!can_project(cell_of(cell)) || P >= H))
    throw py::value_error("P: expected a projection only for an LSTM and P < H, got P = " +
                          std::to_string(P) + " with H = " + std::to_string(H));
  LayerShape s{cell_of(cell), T, B, I, H, reverse, P};
  return s;
}

fc::Problem problem_of(int cell, int dtype, int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,
                       bool reverse, int algo, bool allow_tf32, int device, uintptr_t stream) {
  fc::Problem p{shape_of(cell, T, B, I, H, P, reverse), dtype_of(dtype), device,
                reinterpret_cast<void*>(stream), allow_tf32, algo_of(algo)};
  return p;
}

template <typename Ptr = const void*>
Ptr ptr(uintptr_t v) {
  return reinterpret_cast<Ptr>(v);
}

void layer_forward(int cell, int dtype, int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,
                   bool reverse, int algo, bool allow_tf32, int device, uintptr_t stream,
                   uintptr_t x, uintptr_t h0, uintptr_t c0, uintptr_t w_ih, uintptr_t w_hh,
                   uintptr_t b_ih, uintptr_t b_hh, uintptr_t w_hr, uintptr_t lengths, uintptr_t y,
                   uintptr_t h_n, uintptr_t c_n, uintptr_t reserve, uintptr_t workspace,
                   uintptr_t resets) {
  const fc::Problem p =
      problem_of(cell, dtype, T, B, I, H, P, reverse, algo, allow_tf32, device, stream);
  fc::ForwardPtrs a{ptr(x),         ptr(h0),     ptr(c0),    ptr(w_ih),
                    ptr(w_hh),      ptr(b_ih),   ptr(b_hh),  ptr(w_hr),
                    ptr<const int64_t*>(lengths), ptr<const uint8_t*>(resets), ptr<void*>(y),
                    ptr<void*>(h_n), ptr<void*>(c_n), ptr<void*>(reserve),
                    ptr<void*>(workspace)};
  py::gil_scoped_release nogil;
  fc::layer_forward(p, a);
}

void layer_backward(int cell, int dtype, int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,
                    bool reverse, int algo, bool allow_tf32, int device, uintptr_t stream,
                    uintptr_t x, uintptr_t h0, uintptr_t c0, uintptr_t w_ih, uintptr_t w_hh,
                    uintptr_t b_ih, uintptr_t b_hh, uintptr_t w_hr, uintptr_t lengths,
                    uintptr_t reserve, uintptr_t dy, uintptr_t dh_n, uintptr_t dc_n, uintptr_t dx,
                    uintptr_t dh0, uintptr_t dc0, uintptr_t dw_ih, uintptr_t dw_hh,
                    uintptr_t db_ih, uintptr_t db_hh, uintptr_t dw_hr, uintptr_t workspace,
                    uintptr_t resets) {
  const fc::Problem p =
      problem_of(cell, dtype, T, B, I, H, P, reverse, algo, allow_tf32, device, stream);
  fc::BackwardPtrs a;
  static_cast<fc::ForwardPtrs&>(a) = fc::ForwardPtrs{
      ptr(x), ptr(h0), ptr(c0), ptr(w_ih), ptr(w_hh), ptr(b_ih), ptr(b_hh), ptr(w_hr),
      ptr<const int64_t*>(lengths), ptr<const uint8_t*>(resets), nullptr, nullptr, nullptr,
      ptr<void*>(reserve), ptr<void*>(workspace)};
  a.dy = ptr(dy);
  a.dh_n = ptr(dh_n);
  a.dc_n = ptr(dc_n);
  a.dx = ptr<void*>(dx);
  a.dh0 = ptr<void*>(dh0);
  a.dc0 = ptr<void*>(dc0);
  a.dw_ih = ptr<void*>(dw_ih);
  a.dw_hh = ptr<void*>(dw_hh);
  a.db_ih = ptr<void*>(db_ih);
  a.db_hh = ptr<void*>(db_hh);
  a.dw_hr = ptr<void*>(dw_hr);
  py::gil_scoped_release nogil;
  fc::layer_backward(p, a);
}

// The algo a call runs with (0 standard, 1 persistent); algo='persistent' where it cannot run is
// a ValueError saying why.
int resolve_algo(int cell, int dtype, int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,
                 int algo, int device) {
  fc::Problem p = problem_of(cell, dtype, T, B, I, H, P, false, algo, false, device, 0);
  if (p.algo == fc::Algo::Standard) return 0;
  std::string why;
  const bool fits = fc::persistent_fits(p, &why);
  if (p.algo == fc::Algo::Persistent && !fits)
    throw py::value_error("algo: 'persistent' cannot run this layer: " + why);
  return fits ? 1 : 0;
}

py::tuple workspace_bytes(int cell, int dtype, int64_t T, int64_t B, int64_t I, int64_t H,
                          int64_t P, bool training, int algo) {
  const LayerShape s = shape_of(cell, T, B, I, H, P, false);
  const fc::DType dt = dtype_of(dtype);
  const fc::Algo a = algo_of(algo);
  if (a == fc::Algo::Auto) throw py::value_error("algo: expected a resolved algo (0 or 1)");
  return py::make_tuple(fc::forward_workspace_bytes(s, dt, training, a),
                        training ? fc::backward_workspace_bytes(s, dt, a) : 0);
}

py::tuple reserve_widths(int cell, int64_t H, int64_t P, int dtype) {
  const LayerShape s = shape_of(cell, 1, 1, 1, H, P, false);
  const fastrnn::ReserveWidths w = fc::reserve_width_bytes(s, dtype_of(dtype));
  return py::make_tuple(w.per_slot, w.per_step);
}

py::dict device_info(int device) {
  const int n = fc::device_count();
  if (device < 0 || device >= n)
    throw py::value_error("device: expected an index in [0, " + std::to_string(n) + "), got " +
                          std::to_string(device));
  const fc::DeviceInfo info = fc::device_info(device);
  py::dict d;
  d["name"] = info.name;
  d["compute_capability"] = py::make_tuple(info.major, info.minor);
  d["multiprocessors"] = info.multiprocessors;
  d["total_memory"] = info.total_memory;
  d["l2_bytes"] = info.l2_bytes;
  d["shared_per_block_optin"] = info.shared_per_block_optin;
  d["shared_per_multiprocessor"] = info.shared_per_multiprocessor;
  d["memory_clock_khz"] = info.memory_clock_khz;
  d["memory_bus_bits"] = info.memory_bus_bits;
  return d;
}

}  // namespace

void* DeviceArray::device_alloc(int device, int64_t bytes) {
  return fc::device_alloc(device, bytes);
}
void DeviceArray::device_free(int device, void* p) { fc::device_free(device, p); }

// The module is fastrnn._cuda; the host-emulation build of the same code (cuda/platform.cuh) is
// named _cuda_emulated. (One more macro level so that the name is expanded before pybind11
// pastes it.)
#ifndef FASTRNN_CUDA_MODULE_NAME
#define FASTRNN_CUDA_MODULE_NAME _cuda
#endif
#define FASTRNN_PYBIND11_MODULE(name, variable) PYBIND11_MODULE(name, variable)

FASTRNN_PYBIND11_MODULE(FASTRNN_CUDA_MODULE_NAME, m) {
  m.doc() = "fastrnn's CUDA backend (device pointers as integers; see fastrnn/cuda.py)";
  py::register_exception<fc::Error>(m, "CudaError", PyExc_RuntimeError);

  m.def("layer_forward", &layer_forward, py::arg("cell"), py::arg("dtype"), py::arg("T"),
        py::arg("B"), py::arg("I"), py::arg("H"), py::arg("P"), py::arg("reverse"),
        py::arg("algo"), py::arg("allow_tf32"), py::arg("device"), py::arg("stream"),
        py::arg("x"), py::arg("h0"), py::arg("c0"), py::arg("w_ih"), py::arg("w_hh"),
        py::arg("b_ih"), py::arg("b_hh"), py::arg("w_hr"), py::arg("lengths"), py::arg("y"),
        py::arg("h_n"), py::arg("c_n"), py::arg("reserve"), py::arg("workspace"),
        py::arg("resets") = uintptr_t{0},
        "Queue one layer's forward on `stream` (0 pointers: absent). `resets`: (T, B) device "
        "bytes (0/1) where the state restarts from zeros, or 0.");
  m.def("layer_backward", &layer_backward, py::arg("cell"), py::arg("dtype"), py::arg("T"),
        py::arg("B"), py::arg("I"), py::arg("H"), py::arg("P"), py::arg("reverse"),
        py::arg("algo"), py::arg("allow_tf32"), py::arg("device"), py::arg("stream"),
        py::arg("x"), py::arg("h0"), py::arg("c0"), py::arg("w_ih"), py::arg("w_hh"),
        py::arg("b_ih"), py::arg("b_hh"), py::arg("w_hr"), py::arg("lengths"),
        py::arg("reserve"), py::arg("dy"), py::arg("dh_n"), py::arg("dc_n"), py::arg("dx"),
        py::arg("dh0"), py::arg("dc0"), py::arg("dw_ih"), py::arg("dw_hh"), py::arg("db_ih"),
        py::arg("db_hh"), py::arg("dw_hr"), py::arg("workspace"),
        py::arg("resets") = uintptr_t{0},
        "Queue one layer's backward through time on `stream` (`resets` as the forward's).");
  m.def("resolve_algo", &resolve_algo, py::arg("cell"), py::arg("dtype"), py::arg("T"),
        py::arg("B"), py::arg("I"), py::arg("H"), py::arg("P"), py::arg("algo"),
        py::arg("device"));
  m.def("workspace_bytes", &workspace_bytes, py::arg("cell"), py::arg("dtype"), py::arg("T"),
        py::arg("B"), py::arg("I"), py::arg("H"), py::arg("P"), py::arg("training"),
        py::arg("algo"), "(forward, backward) scratch bytes for a resolved algo.");
  m.def("reserve_widths", &reserve_widths, py::arg("cell"), py::arg("H"), py::arg("P"),
        py::arg("dtype"),
        "(per_slot, per_step) bytes: the reserve is (T+1)*B*per_slot + T*B*per_step bytes.");
  m.def("device_count", &fc::device_count);
  m.def("device_info", &device_info, py::arg("device"));
  m.def("runtime_version", &fc::runtime_version);
  m.def("driver_version", &fc::driver_version);
  m.def("cublas_version", &fc::cublas_version);
  m.def("compiled_architectures", &fc::compiled_architectures);
  m.def("describe_dlpack", &describe_dlpack, py::arg("capsule"),
        "(data pointer, shape, strides or None, (code, bits, lanes), (device type, id)) of an "
        "unconsumed DLPack capsule, which the caller keeps alive while it uses the pointer.");
  m.def("fill_bytes", [](uintptr_t ptr, int value, int64_t nbytes, int device) {
    py::gil_scoped_release nogil;
    fc::fill_bytes(device, reinterpret_cast<void*>(ptr), value, nbytes);
  }, py::arg("ptr"), py::arg("value"), py::arg("nbytes"), py::arg("device"));
  m.def("copy_from_host", [](uintptr_t ptr, py::bytes data, int device) {
    const std::string bytes = data;
    py::gil_scoped_release nogil;
    fc::copy_from_host(device, reinterpret_cast<void*>(ptr), bytes.data(),
                       static_cast<int64_t>(bytes.size()));
  }, py::arg("ptr"), py::arg("data"), py::arg("device"),
     "Synchronous copy of host bytes to device memory.");
  m.def("synchronize", [](int device) {
    py::gil_scoped_release nogil;
    fc::synchronize(device);
  }, py::arg("device"));

#ifdef FASTRNN_CUDA_HOST_EMULATION
  // The emulated cuBLAS's record of the GEMMs (tests: which workspace each stream's GEMMs used).
  m.def("start_gemm_log", [] { fastrnn::emu::gemm_log().start(); },
        "Record every GEMM from now on (the emulation only).");
  m.def("take_gemm_log", [] {
    py::list out;
    for (const auto& r : fastrnn::emu::gemm_log().take())
      out.append(py::make_tuple(reinterpret_cast<uintptr_t>(r.handle),
                                reinterpret_cast<uintptr_t>(r.stream),
                                reinterpret_cast<uintptr_t>(r.workspace)));
    return out;
  }, "[(handle, stream, workspace)] of the GEMMs since start_gemm_log, which stops recording.");
#endif

  py::class_<DeviceArray>(m, "DeviceArray",
                          "A C-contiguous array in CUDA device memory owned by fastrnn; hand it "
                          "to any library with from_dlpack.")
      .def(py::init<std::vector<int64_t>, int, int>(), py::arg("shape"), py::arg("dtype"),
           py::arg("device"))
      .def_property_readonly("shape", [](const DeviceArray& a) {
        return py::tuple(py::cast(a.shape()));
      })
      .def_property_readonly("dtype_code", &DeviceArray::dtype)
      .def_property_readonly("device", &DeviceArray::device)
      .def_property_readonly("nbytes", &DeviceArray::nbytes)
      .def_property_readonly("data_ptr", &DeviceArray::data_ptr)
      .def("__dlpack__",
           [](py::object self, py::object stream, py::object /*max_version*/,
              py::object dl_device, py::object copy) {
             const DeviceArray& a = self.cast<const DeviceArray&>();
             if (!copy.is_none() && copy.cast<bool>())
               throw py::buffer_error("DeviceArray: copy=True is not supported (export shares "
                                      "the memory)");
             if (!dl_device.is_none()) {
               const auto want = dl_device.cast<std::pair<int, int>>();
               if (want.first != kDLCUDA || want.second != a.device())
                 throw py::buffer_error("DeviceArray: lives on CUDA device " +
                                        std::to_string(a.device()) + ", cannot export to (" +
                                        std::to_string(want.first) + ", " +
                                        std::to_string(want.second) + ")");
             }
             // fastrnn queued the writes on the legacy default stream; a consumer naming its
             // own stream (the DLPack protocol) must see them finished: wait for the device.
             if (!stream.is_none() && stream.cast<int64_t>() != -1) {
               py::gil_scoped_release nogil;
               fc::synchronize(a.device());
             }
             return export_dlpack(self);
           },
           py::arg("stream") = py::none(), py::arg("max_version") = py::none(),
           py::arg("dl_device") = py::none(), py::arg("copy") = py::none())
      .def("__dlpack_device__", [](const DeviceArray& a) {
        return py::make_tuple(kDLCUDA, a.device());
      });
#ifdef FASTRNN_JAX_FFI
  fastrnn::bindings::add_jax_ffi_cuda(m);  // fastrnn.jax's custom calls, CUDA platform
#endif
}
