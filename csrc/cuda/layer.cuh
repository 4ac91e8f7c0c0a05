// The CUDA sequence driver: one layer, one direction, any cell and dtype; forward and BPTT.
// Data flow as on the CPU (DESIGN.md §3): X W_ih^T for all steps in one GEMM; then per step
// h W_hh^T (cuBLAS) and one fused pointwise kernel -- or the whole recurrence in the persistent
// kernel; backward's weight gradients as GEMMs over all steps after the loop. Everything is
// queued on the caller's stream; this file is instantiated once per dtype (layer_<dtype>.cu).
#pragma once

#include "cuda/platform.cuh"

#include <algorithm>
#include <mutex>
#include <string>

#include "cuda/check.cuh"
#include "cuda/gemm.cuh"
#include "cuda/layout.cuh"
#include "cuda/persistent.cuh"
#include "cuda/step_kernels.cuh"

namespace fastrnn::cuda {

// Makes `device` current for the calling thread while it lives.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    FASTRNN_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) FASTRNN_CUDA_CHECK(cudaSetDevice(device));
    changed_ = previous_ != device;
  }
  ~DeviceGuard() {
    if (changed_) cudaSetDevice(previous_);  // no throwing from a destructor
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool changed_ = false;
};

template <typename T>
T* at_bytes(void* base, int64_t offset) {
  return reinterpret_cast<T*>(static_cast<char*>(base) + offset);
}

// The device's properties, read once per device (cudaGetDeviceProperties is slow). api.cu.
const cudaDeviceProp& device_properties(int device);

// ---- the persistent kernel's fit ---------------------------------------------------------------

struct PersistentPlan {
  bool fits = false;
  std::string why;          // when it does not fit
  int64_t units_per_block = 0, blocks = 0, forward_smem = 0, backward_smem = 0;
  int max_batch = 0;        // the forward kernel's kMaxB instantiation
};

template <typename T, Cell kCell>
PersistentPlan plan_persistent(const Problem& p) {
  PersistentPlan plan;
  const LayerShape& s = p.shape;
  if (s.P > 0) {
    plan.why = "the persistent kernel has no LSTM projection (proj_size > 0)";
    return plan;
  }
  if (s.B > kPersistentMaxBatch) {
    plan.why = "the persistent kernel takes batch <= " + std::to_string(kPersistentMaxBatch) +
               ", got " + std::to_string(s.B);
    return plan;
  }
  const cudaDeviceProp& prop = device_properties(p.device);
  if (!prop.cooperativeLaunch) {
    plan.why = std::string("device ") + prop.name + " has no cooperative launch";
    return plan;
  }
  const int64_t es = sizeof(T), sms = prop.multiProcessorCount;
  plan.units_per_block = (s.H + sms - 1) / sms;
  plan.blocks = (s.H + plan.units_per_block - 1) / plan.units_per_block;
  plan.forward_smem = persistent_forward_smem(s, es, plan.units_per_block);
  plan.backward_smem = persistent_backward_smem(s, es, plan.units_per_block);
  plan.max_batch = s.B <= 4 ? 4 : 16;
  const int64_t limit = static_cast<int64_t>(prop.sharedMemPerBlockOptin);
  const int64_t need = std::max(plan.forward_smem, plan.backward_smem);
  if (need > limit) {
    plan.why = "W_hh does not fit in shared memory: " + std::to_string(need) +
               " bytes per block (" + std::to_string(plan.blocks) + " blocks, one per "
               "multiprocessor) against " + std::to_string(limit) + " on " + prop.name;
    return plan;
  }
  plan.fits = true;
  return plan;
}

// The kernel's shared-memory limit is process-wide state of the function: one thread's setting
// must not change under another's occupancy query and launch, so the three happen under a lock
// (the launch itself is asynchronous: the lock is held for microseconds).
template <typename Arg>
void launch_cooperative(void (*kernel)(Arg), int64_t blocks, int64_t smem, Arg* args,
                        cudaStream_t stream, const char* what) {
  static std::mutex launch_mutex;
  std::lock_guard<std::mutex> lock(launch_mutex);
  FASTRNN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(smem)));
  int per_sm = 0, device = 0;
  FASTRNN_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &per_sm, kernel, kPersistentThreads, static_cast<size_t>(smem)));
  FASTRNN_CUDA_CHECK(cudaGetDevice(&device));
  const int sms = device_properties(device).multiProcessorCount;
  if (static_cast<int64_t>(per_sm) * sms < blocks)
    throw Error(std::string("fastrnn CUDA: ") + what + ": " + std::to_string(blocks) +
                " blocks cannot all be resident (" + std::to_string(per_sm) + " per "
                "multiprocessor); use algo='standard'");
  FASTRNN_CUDA_CHECK(launch_cooperative_kernel(kernel, static_cast<unsigned>(blocks),
                                               kPersistentThreads, args,
                                               static_cast<size_t>(smem), stream));
}

// ---- forward ----------------------------------------------------------------------------------

template <typename T, Cell kCell>
void forward_layer(const Problem& p, const ForwardPtrs& a, Algo algo) {
  const LayerShape& s = p.shape;
  constexpr int S = UnitMath<kCell>::kSaved;
  constexpr bool kC = has_cell_state(kCell);
  const int64_t Tn = s.T, B = s.B, I = s.I, H = s.H, R = s.R(), P = s.P, GH = s.gate_width();
  const cudaDataType_t dt = data_type<T>();
  const bool training = a.reserve != nullptr, projected = P > 0;
  cudaStream_t stream = static_cast<cudaStream_t>(p.stream);
  cublasHandle_t handle = cublas_handle(p.device, stream);
  const ForwardScratch ws(s, p.dtype, training, algo);
  const ReserveLayout rl(s, p.dtype);
  const T* w_hh = static_cast<const T*>(a.w_hh);
  const T* b_ih = static_cast<const T*>(a.b_ih);
  const T* b_hh = static_cast<const T*>(a.b_hh);
  const int64_t* lengths = a.lengths;
  T* y = static_cast<T*>(a.y);

  // 1. The input projection of every step, one GEMM: xp = X W_ih^T (float).
  float* xp = at_bytes<float>(a.workspace, ws.xp);
  gemm(handle, Tn * B, GH, I, {a.x, dt, I, false}, {a.w_ih, dt, I, true}, 0.0f, xp, CUDA_R_32F,
       GH, p.allow_tf32);

  // 2. Where the states live, and the initial state in the first slot.
  StateSlots<T> slots;
  slots.steps = Tn;
  slots.reverse = s.reverse;
  slots.ring = !training;
  slots.h = training ? at_bytes<T>(a.reserve, rl.hs) : at_bytes<T>(a.workspace, ws.h_pingpong);
  slots.c = !kC ? nullptr
                : training ? at_bytes<float>(a.reserve, rl.cs)
                           : at_bytes<float>(a.workspace, ws.c_pingpong);
  const int64_t first = slots.index(0), last = slots.index(Tn);
  FASTRNN_CUDA_CHECK(cudaMemcpyAsync(slots.h + first * B * R, a.h0, B * R * sizeof(T),
                                     cudaMemcpyDeviceToDevice, stream));
  if constexpr (kC) {
    FASTRNN_LAUNCH(blocks_for(B * H), kPointwiseThreads, 0, stream, widen_kernel<T>)(
        static_cast<const T*>(a.c0), slots.c + first * B * H, B * H);
    FASTRNN_CHECK_LAUNCH("widen_kernel");
  }
  float* acts = training && S > 0 ? at_bytes<float>(a.reserve, rl.acts) : nullptr;

  // 3. The recurrence.
  if (algo == Algo::Persistent) {
    const PersistentPlan plan = plan_persistent<T, kCell>(p);
    if (!plan.fits) throw Error("fastrnn CUDA: algo='persistent': " + plan.why);
    PersistentForwardArgs<T> args{Tn, B, H, plan.units_per_block, s.reverse, xp, w_hh, b_ih,
                                  b_hh, slots, y, acts, lengths};
    if (plan.max_batch == 4)
      launch_cooperative(persistent_forward_kernel<T, kCell, 4>, plan.blocks, plan.forward_smem,
                         &args, stream, "persistent_forward_kernel");
    else
      launch_cooperative(persistent_forward_kernel<T, kCell, 16>, plan.blocks, plan.forward_smem,
                         &args, stream, "persistent_forward_kernel");
  } else {
    float* hp = at_bytes<float>(a.workspace, ws.hp);
    T* m_infer = projected && !training ? at_bytes<T>(a.workspace, ws.m) : nullptr;
    float* h_proj = projected ? at_bytes<float>(a.workspace, ws.h_proj) : nullptr;
    for (int64_t k = 0; k < Tn; ++k) {
      const int64_t t = s.reverse ? Tn - 1 - k : k;
      const T* h_prev = slots.h + slots.index(k) * B * R;
      T* h_new = slots.h + slots.index(k + 1) * B * R;
      gemm(handle, B, GH, R, {h_prev, dt, R, false}, {w_hh, dt, R, true}, 0.0f, hp, CUDA_R_32F,
           GH, p.allow_tf32);
      T* m = projected ? (training ? at_bytes<T>(a.reserve, rl.ms) + t * B * H : m_infer) : nullptr;
      StepForwardArgs<T> step{B, H, R, t, xp + t * B * GH, hp, b_ih, b_hh, h_prev,
                              kC ? slots.c + slots.index(k) * B * H : nullptr,
                              projected ? m : h_new, projected ? nullptr : y + t * B * R,
                              kC ? slots.c + slots.index(k + 1) * B * H : nullptr,
                              acts ? acts + t * B * S * H : nullptr, lengths, projected};
      FASTRNN_LAUNCH(blocks_for(B * H), kPointwiseThreads, 0, stream, forward_step_kernel<T, kCell>)(step);
      FASTRNN_CHECK_LAUNCH("forward_step_kernel");
      if (projected) {
        gemm(handle, B, P, H, {m, dt, H, false}, {a.w_hr, dt, H, true}, 0.0f, h_proj, CUDA_R_32F,
             P, p.allow_tf32);
        FASTRNN_LAUNCH(blocks_for(B * P), kPointwiseThreads, 0, stream, commit_projection_kernel<T>)(
            B, P, t, h_proj, h_prev, h_new, y + t * B * R, lengths);
        FASTRNN_CHECK_LAUNCH("commit_projection_kernel");
      }
    }
  }

  // 4. Final states: each sequence's state after its own last valid step (padded steps carry).
  FASTRNN_CUDA_CHECK(cudaMemcpyAsync(a.h_n, slots.h + last * B * R, B * R * sizeof(T),
                                     cudaMemcpyDeviceToDevice, stream));
  if constexpr (kC) {
    FASTRNN_LAUNCH(blocks_for(B * H), kPointwiseThreads, 0, stream, narrow_kernel<T>)(
        slots.c + last * B * H, static_cast<T*>(a.c_n), B * H);
    FASTRNN_CHECK_LAUNCH("narrow_kernel");
  }
}

// ---- backward ---------------------------------------------------------------------------------

template <typename T, Cell kCell>
void backward_layer(const Problem& p, const BackwardPtrs& a, Algo algo) {
  const LayerShape& s = p.shape;
  constexpr bool kC = has_cell_state(kCell);
  constexpr int S = UnitMath<kCell>::kSaved;
  const int64_t Tn = s.T, B = s.B, I = s.I, H = s.H, R = s.R(), P = s.P, GH = s.gate_width();
  const cudaDataType_t dt = data_type<T>();
  const bool projected = P > 0;
  cudaStream_t stream = static_cast<cudaStream_t>(p.stream);
  cublasHandle_t handle = cublas_handle(p.device, stream);
  const BackwardScratch ws(s, p.dtype);
  const ReserveLayout rl(s, p.dtype);
  const T* w_hh = static_cast<const T*>(a.w_hh);
  const T* dy = static_cast<const T*>(a.dy);
  const T* hs = at_bytes<T>(a.reserve, rl.hs);
  const float* cs = kC ? at_bytes<float>(a.reserve, rl.cs) : nullptr;
  const float* acts = S > 0 ? at_bytes<float>(a.reserve, rl.acts) : nullptr;
  T* dgx = at_bytes<T>(a.workspace, ws.dgx);
  T* dgh = at_bytes<T>(a.workspace, ws.dgh);
  float* dh_carry = at_bytes<float>(a.workspace, ws.dh_carry);
  float* dc_carry = kC ? at_bytes<float>(a.workspace, ws.dc_carry) : nullptr;
  T* dh_out = projected ? at_bytes<T>(a.workspace, ws.dh_out) : nullptr;
  float* dm = projected ? at_bytes<float>(a.workspace, ws.dm) : nullptr;

  FASTRNN_LAUNCH(blocks_for(B * R), kPointwiseThreads, 0, stream, widen_kernel<T>)(
      static_cast<const T*>(a.dh_n), dh_carry, B * R);
  FASTRNN_CHECK_LAUNCH("widen_kernel");
  if constexpr (kC) {
    FASTRNN_LAUNCH(blocks_for(B * H), kPointwiseThreads, 0, stream, widen_kernel<T>)(
        static_cast<const T*>(a.dc_n), dc_carry, B * H);
    FASTRNN_CHECK_LAUNCH("widen_kernel");
  }

  // 1. Through time, last step first: the pre-activation gradients of every step.
  if (algo == Algo::Persistent) {
    const PersistentPlan plan = plan_persistent<T, kCell>(p);
    if (!plan.fits) throw Error("fastrnn CUDA: algo='persistent': " + plan.why);
    PersistentBackwardArgs<T> args{Tn, B, H, plan.units_per_block, s.reverse, w_hh, dy, hs, cs,
                                   acts, a.lengths, dgx, dgh, dh_carry, dc_carry};
    launch_cooperative(persistent_backward_kernel<T, kCell>, plan.blocks, plan.backward_smem,
                       &args, stream, "persistent_backward_kernel");
  } else {
    for (int64_t k = 0; k < Tn; ++k) {
      const int64_t t = s.reverse ? k : Tn - 1 - k;
      const int64_t prev_slot = s.reverse ? t + 1 : t, new_slot = s.reverse ? t : t + 1;
      if (projected) {
        FASTRNN_LAUNCH(blocks_for(B * P), kPointwiseThreads, 0, stream, projection_grad_kernel<T>)(
            B, P, t, dy + t * B * R, dh_carry, dh_out + t * B * P, a.lengths);
        FASTRNN_CHECK_LAUNCH("projection_grad_kernel");
        gemm(handle, B, H, P, {dh_out + t * B * P, dt, P, false}, {a.w_hr, dt, H, false}, 0.0f,
             dm, CUDA_R_32F, H, p.allow_tf32);
      }
      StepBackwardArgs<T> step{B, H, R, t, projected ? nullptr : dy + t * B * R, dm, dh_carry,
                               dc_carry, acts ? acts + t * B * S * H : nullptr,
                               hs + prev_slot * B * R, hs + new_slot * B * R,
                               kC ? cs + prev_slot * B * H : nullptr,
                               kC ? cs + new_slot * B * H : nullptr, dgx + t * B * GH,
                               dgh + t * B * GH, a.lengths};
      FASTRNN_LAUNCH(blocks_for(B * H), kPointwiseThreads, 0, stream, backward_step_kernel<T, kCell>)(step);
      FASTRNN_CHECK_LAUNCH("backward_step_kernel");
      // dh_carry (the direct part, or the carried gradient at padded rows) += dgh W_hh
      gemm(handle, B, R, GH, {dgh + t * B * GH, dt, GH, false}, {w_hh, dt, R, false}, 1.0f,
           dh_carry, CUDA_R_32F, R, p.allow_tf32);
    }
  }
  FASTRNN_LAUNCH(blocks_for(B * R), kPointwiseThreads, 0, stream, narrow_kernel<T>)(
      dh_carry, static_cast<T*>(a.dh0), B * R);
  FASTRNN_CHECK_LAUNCH("narrow_kernel");
  if constexpr (kC) {
    FASTRNN_LAUNCH(blocks_for(B * H), kPointwiseThreads, 0, stream, narrow_kernel<T>)(
        dc_carry, static_cast<T*>(a.dc0), B * H);
    FASTRNN_CHECK_LAUNCH("narrow_kernel");
  }

  // 2. Everything applied at all steps, as GEMMs over all T*B rows.
  const int64_t rows = Tn * B;
  gemm(handle, rows, I, GH, {dgx, dt, GH, false}, {a.w_ih, dt, I, false}, 0.0f, a.dx, dt, I,
       p.allow_tf32);
  gemm(handle, GH, I, rows, {dgx, dt, GH, true}, {a.x, dt, I, false}, 0.0f, a.dw_ih, dt, I,
       p.allow_tf32);
  const T* h_prev_all = hs + (s.reverse ? B * R : 0);  // slots 0..T-1, or 1..T in reverse
  gemm(handle, GH, R, rows, {dgh, dt, GH, true}, {h_prev_all, dt, R, false}, 0.0f, a.dw_hh, dt,
       R, p.allow_tf32);
  if (a.db_ih) {
    const dim3 block(kSumColumns, kSumRows);
    const unsigned grid = blocks_for(GH, kSumColumns);
    FASTRNN_LAUNCH(grid, block, 0, stream, column_sum_kernel<T>)(dgx, rows, GH, static_cast<T*>(a.db_ih));
    FASTRNN_CHECK_LAUNCH("column_sum_kernel");
    FASTRNN_LAUNCH(grid, block, 0, stream, column_sum_kernel<T>)(dgh, rows, GH, static_cast<T*>(a.db_hh));
    FASTRNN_CHECK_LAUNCH("column_sum_kernel");
  }
  if (projected) {
    gemm(handle, P, H, rows, {dh_out, dt, P, true}, {at_bytes<T>(a.reserve, rl.ms), dt, H, false},
         0.0f, a.dw_hr, dt, H, p.allow_tf32);
  }
}

// ---- per-dtype entry points (defined in layer_<dtype>.cu) ---------------------------------------

template <typename T>
void forward_typed(const Problem& p, const ForwardPtrs& a, Algo algo) {
  switch (p.shape.cell) {
    case Cell::RnnTanh: return forward_layer<T, Cell::RnnTanh>(p, a, algo);
    case Cell::RnnRelu: return forward_layer<T, Cell::RnnRelu>(p, a, algo);
    case Cell::Lstm: return forward_layer<T, Cell::Lstm>(p, a, algo);
    case Cell::Gru: return forward_layer<T, Cell::Gru>(p, a, algo);
  }
  throw Error("fastrnn CUDA: unknown cell kind");
}

template <typename T>
void backward_typed(const Problem& p, const BackwardPtrs& a, Algo algo) {
  switch (p.shape.cell) {
    case Cell::RnnTanh: return backward_layer<T, Cell::RnnTanh>(p, a, algo);
    case Cell::RnnRelu: return backward_layer<T, Cell::RnnRelu>(p, a, algo);
    case Cell::Lstm: return backward_layer<T, Cell::Lstm>(p, a, algo);
    case Cell::Gru: return backward_layer<T, Cell::Gru>(p, a, algo);
  }
  throw Error("fastrnn CUDA: unknown cell kind");
}

template <typename T>
PersistentPlan plan_typed(const Problem& p) {
  switch (p.shape.cell) {
    case Cell::RnnTanh: return plan_persistent<T, Cell::RnnTanh>(p);
    case Cell::RnnRelu: return plan_persistent<T, Cell::RnnRelu>(p);
    case Cell::Lstm: return plan_persistent<T, Cell::Lstm>(p);
    case Cell::Gru: return plan_persistent<T, Cell::Gru>(p);
  }
  throw Error("fastrnn CUDA: unknown cell kind");
}

#define FASTRNN_INSTANTIATE_CUDA_LAYER(T)                                               \
  template void forward_typed<T>(const Problem&, const ForwardPtrs&, Algo);             \
  template void backward_typed<T>(const Problem&, const BackwardPtrs&, Algo);           \
  template PersistentPlan plan_typed<T>(const Problem&);

}  // namespace fastrnn::cuda
