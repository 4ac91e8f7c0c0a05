// XLA FFI handlers of the CUDA backend, for fastrnn.jax on a GPU: one recurrent layer, one
// direction, forward and backward, as XLA custom calls registered for the CUDA platform under the
// names the CPU core's handlers have for the CPU (jax_ffi.cpp). Same buffers, attributes and
// results in the same order, checked by the same code (jax_ffi_checks.h), so fastrnn.jax issues
// one ffi_call on either platform; what differs:
//   - dtypes: float32, float16 and bfloat16 (the CUDA backend's), where the CPU takes float32
//     and float64;
//   - the reserve is the CUDA backend's layout (cuda/layout.cuh): a one-dimensional buffer of
//     fastrnn::cuda::reserve_bytes() bytes, of any element type (uint8 of that many elements,
//     or, for float32, the CPU's own reserve shape: float32 of reserve_elements(), the same
//     bytes -- the test checks that the two agree);
//   - lengths stay on the device: int64 is passed through, int32 is widened on the device into
//     scratch; their values are not checked (that would synchronise the stream; the kernels treat
//     any value safely, as a mask t < lengths[b]);
//   - gate_grads (the CPU core's gate gradients for batched rules) is not offered by the CUDA
//     backend: a call with gate_grads=1 is an Unimplemented error;
//   - the algo is Auto (the backend's choice) and TF32 is off: float32 products in float32.
// Work is queued on the stream XLA gives the handler, on that stream's device; scratch comes from
// XLA's allocator for the call. Unverified on a GPU until one is lent (tests/cuda/
// test_jax_cuda_ffi.py holds the GPU comparison against the CPU handlers).
#include "bindings/jax_ffi_cuda.h"

#include <cstdint>
#include <exception>
#include <optional>
#include <string>

#include "bindings/jax_ffi_checks.h"
#include "fastrnn/fastrnn_cuda.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
namespace fc = fastrnn::cuda;

namespace fastrnn::bindings {

namespace {

using namespace jax;  // NOLINT: the checks shared with the CPU handlers

// A request the CUDA backend does not serve (XLA's Unimplemented).
struct Unsupported {
  std::string message;
};

// The backend's workspace layout assumes a 256-byte aligned base (fastrnn_cuda.h); XLA's FFI
// allocator accepts alignments up to 16 only, so the scratch is over-allocated and aligned here.
constexpr uintptr_t kWorkspaceAlign = 256;

uintptr_t round_up(uintptr_t v, uintptr_t to) { return (v + to - 1) / to * to; }

// One call's device scratch from XLA: the backend's workspace, then the int64 lengths when JAX
// passed int32 ones. Freed by XLA when the handler returns (the queued work is ordered on the
// stream before any later use of that memory, as for every XLA temporary).
struct DeviceScratch {
  void* workspace = nullptr;
  int64_t* lengths = nullptr;
};

DeviceScratch allocate(ffi::ScratchAllocator& scratch, int64_t workspace_bytes,
                       int64_t widened_lengths) {
  const uintptr_t lengths_at = round_up(static_cast<uintptr_t>(workspace_bytes), kWorkspaceAlign);
  const uintptr_t total =
      lengths_at + static_cast<uintptr_t>(widened_lengths) * sizeof(int64_t) + kWorkspaceAlign;
  const std::optional<void*> memory = scratch.Allocate(total, 16);
  if (!memory.has_value() || *memory == nullptr)
    throw fc::Error("fastrnn CUDA: XLA's scratch allocator could not provide " +
                    std::to_string(total) + " bytes of workspace");
  const uintptr_t base = round_up(reinterpret_cast<uintptr_t>(*memory), kWorkspaceAlign);
  DeviceScratch out;
  out.workspace = reinterpret_cast<void*>(base);
  if (widened_lengths > 0) out.lengths = reinterpret_cast<int64_t*>(base + lengths_at);
  return out;
}

// The reserve: one dimension, the backend's byte count, any element type; a zero-size
// placeholder when not `present` (inference).
void* reserve_buffer(const ffi::AnyBuffer& b, const LayerShape& s, fc::DType dtype,
                     bool present) {
  if (!present) return checked(b, "reserve", b.element_type(), {}, false);
  const int64_t bytes = fc::reserve_bytes(s, dtype);
  const Dims d = dims_of(b);
  if (d.size() != 1 || static_cast<int64_t>(b.size_bytes()) != bytes)
    throw BadArgument{"reserve: expected " + std::to_string(bytes) +
                      " bytes in one dimension (the CUDA layout: uint8 of shape (" +
                      std::to_string(bytes) + ",), or any element type of that size), got shape " +
                      dims_str(d) + " of " + std::to_string(b.size_bytes()) + " bytes"};
  return b.untyped_data();
}

// The layer's inputs as the CUDA backend takes them, checked; lengths on the device as int64
// (widened into `scratch` when they come as int32, which is why the scratch is allocated here).
struct CudaLayer {
  LayerInputs in;
  fc::Problem problem{};
  fc::ForwardPtrs ptrs{};
  const int32_t* lengths32 = nullptr;  // to widen, once the scratch is there

  CudaLayer(void* stream, int64_t cell, int64_t reverse, const ffi::AnyBuffer& x,
            const ffi::AnyBuffer& h0, const ffi::AnyBuffer& c0, const ffi::AnyBuffer& w_ih,
            const ffi::AnyBuffer& w_hh, const ffi::AnyBuffer& b_ih, const ffi::AnyBuffer& b_hh,
            const ffi::AnyBuffer& w_hr, const ffi::AnyBuffer& lengths,
            const ffi::AnyBuffer& resets, fc::DType dtype)
      : in(check_layer(cell, reverse != 0, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths,
                       resets, [](const ffi::AnyBuffer&) {})) {
    problem.shape = in.shape;
    problem.dtype = dtype;
    problem.device = jax_cuda::stream_device(stream);
    problem.stream = stream;
    problem.allow_tf32 = false;
    problem.algo = fc::Algo::Auto;
    ptrs.x = in.x;
    ptrs.h0 = in.h0;
    ptrs.c0 = in.c0;
    ptrs.w_ih = in.w_ih;
    ptrs.w_hh = in.w_hh;
    ptrs.b_ih = in.b_ih;
    ptrs.b_hh = in.b_hh;
    ptrs.w_hr = in.w_hr;
    ptrs.resets = in.resets;
    if (in.lengths != nullptr) {
      if (in.lengths->element_type() == ffi::DataType::S64)
        ptrs.lengths = static_cast<const int64_t*>(in.lengths->untyped_data());
      else
        lengths32 = static_cast<const int32_t*>(in.lengths->untyped_data());
    }
  }

  // Allocates the call's scratch (workspace_bytes for the algo the call resolves to) and widens
  // int32 lengths into it.
  void take_scratch(ffi::ScratchAllocator& scratch, int64_t workspace_bytes) {
    const DeviceScratch mem =
        allocate(scratch, workspace_bytes, lengths32 != nullptr ? in.shape.B : 0);
    ptrs.workspace = mem.workspace;
    if (lengths32 != nullptr) {
      jax_cuda::widen_lengths(problem.device, lengths32, mem.lengths, in.shape.B, problem.stream);
      ptrs.lengths = mem.lengths;
    }
  }
};

// Runs body for x's dtype as the backend's; bad arguments and the backend's errors become XLA
// errors (raised in Python as an XlaRuntimeError carrying the message).
template <typename Body>
ffi::Error guarded(const ffi::AnyBuffer& x, Body&& body) {
  try {
    switch (x.element_type()) {
      case ffi::DataType::F32: body(fc::DType::Float32); break;
      case ffi::DataType::F16: body(fc::DType::Float16); break;
      case ffi::DataType::BF16: body(fc::DType::BFloat16); break;
      default:
        return ffi::Error::InvalidArgument(
            "x: expected dtype float32, float16 or bfloat16 (the CUDA backend's)");
    }
  } catch (const BadArgument& e) {
    return ffi::Error::InvalidArgument("fastrnn: " + e.message);
  } catch (const Unsupported& e) {
    return ffi::Error(ffi::ErrorCode::kUnimplemented, "fastrnn: " + e.message);
  } catch (const std::exception& e) {  // fc::Error: a CUDA or cuBLAS call failed
    return ffi::Error::Internal(std::string("fastrnn: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error forward_impl(void* stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer x,
                        ffi::AnyBuffer h0, ffi::AnyBuffer c0, ffi::AnyBuffer w_ih,
                        ffi::AnyBuffer w_hh, ffi::AnyBuffer b_ih, ffi::AnyBuffer b_hh,
                        ffi::AnyBuffer w_hr, ffi::AnyBuffer lengths, ffi::AnyBuffer resets,
                        int64_t cell, int64_t reverse, int64_t training,
                        ffi::Result<ffi::AnyBuffer> y, ffi::Result<ffi::AnyBuffer> h_n,
                        ffi::Result<ffi::AnyBuffer> c_n, ffi::Result<ffi::AnyBuffer> reserve) {
  return guarded(x, [&](fc::DType dtype) {
    CudaLayer layer(stream, cell, reverse, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths,
                    resets, dtype);
    const LayerShape& s = layer.in.shape;
    const ForwardOutputs out = check_forward_outputs(layer.in, y, h_n, c_n);
    fc::ForwardPtrs& p = layer.ptrs;
    p.y = out.y;
    p.h_n = out.h_n;
    p.c_n = out.c_n;
    p.reserve = reserve_buffer(*reserve, s, dtype, training != 0);
    const fc::Algo algo = fc::resolve_algo(layer.problem);
    layer.take_scratch(scratch, fc::forward_workspace_bytes(s, dtype, training != 0, algo));
    fc::layer_forward(layer.problem, p);
  });
}

ffi::Error backward_impl(void* stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer x,
                         ffi::AnyBuffer h0, ffi::AnyBuffer c0, ffi::AnyBuffer w_ih,
                         ffi::AnyBuffer w_hh, ffi::AnyBuffer b_ih, ffi::AnyBuffer b_hh,
                         ffi::AnyBuffer w_hr, ffi::AnyBuffer lengths, ffi::AnyBuffer resets,
                         ffi::AnyBuffer reserve, ffi::AnyBuffer dy, ffi::AnyBuffer dh_n,
                         ffi::AnyBuffer dc_n, int64_t cell, int64_t reverse, int64_t gate_grads,
                         ffi::Result<ffi::AnyBuffer> dx, ffi::Result<ffi::AnyBuffer> dh0,
                         ffi::Result<ffi::AnyBuffer> dc0, ffi::Result<ffi::AnyBuffer> dw_ih,
                         ffi::Result<ffi::AnyBuffer> dw_hh, ffi::Result<ffi::AnyBuffer> db_ih,
                         ffi::Result<ffi::AnyBuffer> db_hh, ffi::Result<ffi::AnyBuffer> dw_hr,
                         ffi::Result<ffi::AnyBuffer> dgates, ffi::Result<ffi::AnyBuffer> dgates_h,
                         ffi::Result<ffi::AnyBuffer> dh_proj) {
  return guarded(x, [&](fc::DType dtype) {
    CudaLayer layer(stream, cell, reverse, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths,
                    resets, dtype);
    const LayerShape& s = layer.in.shape;
    void* reserve_data = reserve_buffer(reserve, s, dtype, true);
    const BackwardBuffers g =
        check_backward_buffers(layer.in, gate_grads != 0, dy, dh_n, dc_n, dx, dh0, dc0, dw_ih,
                               dw_hh, db_ih, db_hh, dw_hr, dgates, dgates_h, dh_proj);
    if (gate_grads != 0)
      throw Unsupported{"gate_grads: the CUDA backend returns the weight gradients, not the "
                        "gate gradients; call it with gate_grads=0"};
    fc::BackwardPtrs p{};
    static_cast<fc::ForwardPtrs&>(p) = layer.ptrs;
    p.reserve = reserve_data;
    p.dy = g.dy;
    p.dh_n = g.dh_n;
    p.dc_n = g.dc_n;
    p.dx = g.dx;
    p.dh0 = g.dh0;
    p.dc0 = g.dc0;
    p.dw_ih = g.dw_ih;
    p.dw_hh = g.dw_hh;
    p.db_ih = g.db_ih;
    p.db_hh = g.db_hh;
    p.dw_hr = g.dw_hr;
    const fc::Algo algo = fc::resolve_algo(layer.problem);
    layer.take_scratch(scratch, fc::backward_workspace_bytes(s, dtype, algo));
    p.workspace = layer.ptrs.workspace;
    p.lengths = layer.ptrs.lengths;
    fc::layer_backward(layer.problem, p);
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    fastrnn_jax_cuda_layer_forward, forward_impl,
    ffi::Ffi::Bind()
        .Ctx<ffi::PlatformStream<void*>>()  // cudaStream_t
        .Ctx<ffi::ScratchAllocator>()
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
    fastrnn_jax_cuda_layer_backward, backward_impl,
    ffi::Ffi::Bind()
        .Ctx<ffi::PlatformStream<void*>>()  // cudaStream_t
        .Ctx<ffi::ScratchAllocator>()
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

void add_jax_ffi_cuda(pybind11::module_& m) {
  namespace py = pybind11;
  m.def(
      "jax_ffi_targets",
      [] {
        py::dict targets;
        targets["fastrnn_layer_forward"] =
            py::capsule(reinterpret_cast<void*>(fastrnn_jax_cuda_layer_forward));
        targets["fastrnn_layer_backward"] =
            py::capsule(reinterpret_cast<void*>(fastrnn_jax_cuda_layer_backward));
        return targets;
      },
      "{name: PyCapsule} of the XLA FFI handlers (CUDA platform) for "
      "jax.ffi.register_ffi_target(name, capsule, platform='CUDA'). Their reserve is "
      "(T+1)*B*per_slot + T*B*per_step bytes, (per_slot, per_step) = reserve_widths(cell, H, P, "
      "dtype code).");
  m.attr("JAX_FFI_API_VERSION") = py::make_tuple(XLA_FFI_API_MAJOR, XLA_FFI_API_MINOR);
#ifdef FASTRNN_JAXLIB_VERSION
  m.attr("JAX_FFI_BUILT_WITH_JAXLIB") = FASTRNN_JAXLIB_VERSION;
#endif
}

}  // namespace fastrnn::bindings
