// The CUDA sequence driver: one layer, one direction, any cell and dtype; forward and BPTT.
// Data flow as on the CPU (docs/design.md §3): X W_ih^T for all steps in one GEMM; then per step
// h W_hh^T (cuBLAS) and one fused pointwise kernel -- or the whole recurrence in the persistent
// kernel; backward's weight gradients as GEMMs over all steps after the loop. Everything is
// queued on the caller's stream; this file is instantiated once per dtype (layer_<dtype>.cu).
// What differs between cells comes from CellMath's traits (cell_math.cuh): no cell is named here.
#pragma once

#include "cuda/platform.cuh"

#include <algorithm>
#include <mutex>
#include <string>

#include "common/dispatch.h"
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

template <typename element_t>
element_t* at_bytes(void* base, int64_t offset) {
  return reinterpret_cast<element_t*>(static_cast<char*>(base) + offset);
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

template <typename scalar_t, Cell kCell>
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
  const int64_t es = sizeof(scalar_t), sms = prop.multiProcessorCount;
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

template <typename scalar_t, Cell kCell>
void forward_layer(const Problem& p, const ForwardPtrs& a, Algo algo) {
  const LayerShape& s = p.shape;
  using Math = CellMath<kCell>;
  constexpr int S = Math::kSaved;
  constexpr bool kC = Math::kHasCellState;
  static_assert(S == reserve_saved_per_unit<kCell>(), "the reserve holds what the kernels save");
  const int64_t T = s.T, B = s.B, I = s.I, H = s.H, R = s.R(), P = s.P, GH = s.gate_width();
  const cudaDataType_t dt = data_type<scalar_t>();
  const bool training = a.reserve != nullptr, projected = P > 0;
  cudaStream_t stream = static_cast<cudaStream_t>(p.stream);
  cublasHandle_t handle = cublas_handle(p.device, stream);
  const ForwardWorkspace ws(s, p.dtype, training, algo);
  const ReserveLayout rl(s, p.dtype);
  const scalar_t* w_hh = static_cast<const scalar_t*>(a.w_hh);
  const scalar_t* b_ih = static_cast<const scalar_t*>(a.b_ih);
  const scalar_t* b_hh = static_cast<const scalar_t*>(a.b_hh);
  const int64_t* lengths = a.lengths;
  const StateResets resets{a.resets, lengths, T, B, s.reverse};
  scalar_t* y = static_cast<scalar_t*>(a.y);

  // 1. The input projection of every step, one GEMM: xp = X W_ih^T (float).
  float* xp = at_bytes<float>(a.workspace, ws.xp);
  gemm(handle, T * B, GH, I, {a.x, dt, I, false}, {a.w_ih, dt, I, true}, 0.0f, xp, CUDA_R_32F,
       GH, p.allow_tf32);

  // 2. Where the states live, and the initial state in the first slot.
  StateSlots<scalar_t> slots;
  slots.T = T;
  slots.reverse = s.reverse;
  slots.ring = !training;
  slots.h = training ? at_bytes<scalar_t>(a.reserve, rl.hs)
                     : at_bytes<scalar_t>(a.workspace, ws.h_pingpong);
  slots.c = !kC ? nullptr
                : training ? at_bytes<float>(a.reserve, rl.cs)
                           : at_bytes<float>(a.workspace, ws.c_pingpong);
  const int64_t first = slots.index(0), last = slots.index(T);
  FASTRNN_CUDA_CHECK(cudaMemcpyAsync(slots.h + first * B * R, a.h0, B * R * sizeof(scalar_t),
                                     cudaMemcpyDeviceToDevice, stream));
  if constexpr (kC) {
    FASTRNN_LAUNCH(blocks_for(B * H), kPointwiseThreads, 0, stream, widen_kernel<scalar_t>)(
        static_cast<const scalar_t*>(a.c0), slots.c + first * B * H, B * H);
    FASTRNN_CHECK_LAUNCH("widen_kernel");
  }
  float* acts = training && S > 0 ? at_bytes<float>(a.reserve, rl.acts) : nullptr;

  // 3. The recurrence.
  if (algo == Algo::Persistent) {
    const PersistentPlan plan = plan_persistent<scalar_t, kCell>(p);
    if (!plan.fits) throw Error("fastrnn CUDA: algo='persistent': " + plan.why);
    PersistentForwardArgs<scalar_t> args{T, B, H, plan.units_per_block, s.reverse, xp, w_hh,
                                         b_ih, b_hh, slots, y, acts, lengths, resets};
    if (plan.max_batch == 4)
      launch_cooperative(persistent_forward_kernel<scalar_t, kCell, 4>, plan.blocks,
                         plan.forward_smem, &args, stream, "persistent_forward_kernel");
    else
      launch_cooperative(persistent_forward_kernel<scalar_t, kCell, 16>, plan.blocks,
                         plan.forward_smem, &args, stream, "persistent_forward_kernel");
  } else {
    float* hp = at_bytes<float>(a.workspace, ws.hp);
    scalar_t* m_infer = projected && !training ? at_bytes<scalar_t>(a.workspace, ws.m) : nullptr;
    float* h_proj = projected ? at_bytes<float>(a.workspace, ws.h_proj) : nullptr;
    for (int64_t k = 0; k < T; ++k) {
      const int64_t t = s.reverse ? T - 1 - k : k;
      const scalar_t* h_prev = slots.h + slots.index(k) * B * R;
      scalar_t* h_new = slots.h + slots.index(k + 1) * B * R;
      gemm(handle, B, GH, R, {h_prev, dt, R, false}, {w_hh, dt, R, true}, 0.0f, hp, CUDA_R_32F,
           GH, p.allow_tf32);
      scalar_t* m = !projected ? nullptr
                    : training ? at_bytes<scalar_t>(a.reserve, rl.ms) + t * B * H
                               : m_infer;
      StepForwardArgs<scalar_t> step{B, H, R, t, xp + t * B * GH, hp, b_ih, b_hh, h_prev,
                                     kC ? slots.c + slots.index(k) * B * H : nullptr,
                                     projected ? m : h_new, projected ? nullptr : y + t * B * R,
                                     kC ? slots.c + slots.index(k + 1) * B * H : nullptr,
                                     acts ? acts + t * B * S * H : nullptr, lengths, projected,
                                     resets};
      FASTRNN_LAUNCH(blocks_for(B * H), kPointwiseThreads, 0, stream,
                     forward_step_kernel<scalar_t, kCell>)(step);
      FASTRNN_CHECK_LAUNCH("forward_step_kernel");
      if (projected) {
        gemm(handle, B, P, H, {m, dt, H, false}, {a.w_hr, dt, H, true}, 0.0f, h_proj, CUDA_R_32F,
             P, p.allow_tf32);
        FASTRNN_LAUNCH(blocks_for(B * P), kPointwiseThreads, 0, stream,
                       commit_projection_kernel<scalar_t>)(B, P, t, h_proj, h_prev, h_new,
                                                           y + t * B * R, lengths);
        FASTRNN_CHECK_LAUNCH("commit_projection_kernel");
      }
    }
  }

  // 4. Final states: each sequence's state after its own last valid step (padded steps carry).
  FASTRNN_CUDA_CHECK(cudaMemcpyAsync(a.h_n, slots.h + last * B * R, B * R * sizeof(scalar_t),
                                     cudaMemcpyDeviceToDevice, stream));
  if constexpr (kC) {
    FASTRNN_LAUNCH(blocks_for(B * H), kPointwiseThreads, 0, stream, narrow_kernel<scalar_t>)(
        slots.c + last * B * H, static_cast<scalar_t*>(a.c_n), B * H);
    FASTRNN_CHECK_LAUNCH("narrow_kernel");
  }
}

// ---- backward ---------------------------------------------------------------------------------

template <typename scalar_t, Cell kCell>
void backward_layer(const Problem& p, const BackwardPtrs& a, Algo algo) {
  const LayerShape& s = p.shape;
  using Math = CellMath<kCell>;
  constexpr int S = Math::kSaved;
  constexpr bool kC = Math::kHasCellState;
  static_assert(S == reserve_saved_per_unit<kCell>(), "the reserve holds what the kernels save");
  const int64_t T = s.T, B = s.B, I = s.I, H = s.H, R = s.R(), P = s.P, GH = s.gate_width();
  const cudaDataType_t dt = data_type<scalar_t>();
  const bool projected = P > 0;
  cudaStream_t stream = static_cast<cudaStream_t>(p.stream);
  cublasHandle_t handle = cublas_handle(p.device, stream);
  const BackwardWorkspace ws(s, p.dtype);
  const ReserveLayout rl(s, p.dtype);
  const scalar_t* w_hh = static_cast<const scalar_t*>(a.w_hh);
  const scalar_t* dy = static_cast<const scalar_t*>(a.dy);
  const scalar_t* hs = at_bytes<scalar_t>(a.reserve, rl.hs);
  const float* cs = kC ? at_bytes<float>(a.reserve, rl.cs) : nullptr;
  const float* acts = S > 0 ? at_bytes<float>(a.reserve, rl.acts) : nullptr;
  const StateResets resets{a.resets, a.lengths, T, B, s.reverse};
  scalar_t* dgx = at_bytes<scalar_t>(a.workspace, ws.dgx);
  scalar_t* dgh = at_bytes<scalar_t>(a.workspace, ws.dgh);
  float* dh_carry = at_bytes<float>(a.workspace, ws.dh_carry);
  float* dc_carry = kC ? at_bytes<float>(a.workspace, ws.dc_carry) : nullptr;
  scalar_t* dh_out = projected ? at_bytes<scalar_t>(a.workspace, ws.dh_out) : nullptr;
  float* dm = projected ? at_bytes<float>(a.workspace, ws.dm) : nullptr;

  FASTRNN_LAUNCH(blocks_for(B * R), kPointwiseThreads, 0, stream, widen_kernel<scalar_t>)(
      static_cast<const scalar_t*>(a.dh_n), dh_carry, B * R);
  FASTRNN_CHECK_LAUNCH("widen_kernel");
  if constexpr (kC) {
    FASTRNN_LAUNCH(blocks_for(B * H), kPointwiseThreads, 0, stream, widen_kernel<scalar_t>)(
        static_cast<const scalar_t*>(a.dc_n), dc_carry, B * H);
    FASTRNN_CHECK_LAUNCH("widen_kernel");
  }

  // 1. Through time, last step first: the pre-activation gradients of every step.
  if (algo == Algo::Persistent) {
    const PersistentPlan plan = plan_persistent<scalar_t, kCell>(p);
    if (!plan.fits) throw Error("fastrnn CUDA: algo='persistent': " + plan.why);
    PersistentBackwardArgs<scalar_t> args{T, B, H, plan.units_per_block, s.reverse, w_hh, dy,
                                          hs, cs, acts, a.lengths, dgx, dgh, dh_carry, dc_carry,
                                          resets};
    launch_cooperative(persistent_backward_kernel<scalar_t, kCell>, plan.blocks,
                       plan.backward_smem, &args, stream, "persistent_backward_kernel");
  } else {
    for (int64_t k = 0; k < T; ++k) {
      const int64_t t = s.reverse ? k : T - 1 - k;
      const int64_t prev_slot = s.reverse ? t + 1 : t, new_slot = s.reverse ? t : t + 1;
      if (projected) {
        FASTRNN_LAUNCH(blocks_for(B * P), kPointwiseThreads, 0, stream,
                       projection_grad_kernel<scalar_t>)(B, P, t, dy + t * B * R, dh_carry,
                                                         dh_out + t * B * P, a.lengths);
        FASTRNN_CHECK_LAUNCH("projection_grad_kernel");
        gemm(handle, B, H, P, {dh_out + t * B * P, dt, P, false}, {a.w_hr, dt, H, false}, 0.0f,
             dm, CUDA_R_32F, H, p.allow_tf32);
      }
      StepBackwardArgs<scalar_t> step{B, H, R, t, projected ? nullptr : dy + t * B * R, dm,
                                      dh_carry, dc_carry, acts ? acts + t * B * S * H : nullptr,
                                      hs + prev_slot * B * R, hs + new_slot * B * R,
                                      kC ? cs + prev_slot * B * H : nullptr,
                                      kC ? cs + new_slot * B * H : nullptr, dgx + t * B * GH,
                                      dgh + t * B * GH, a.lengths, resets};
      FASTRNN_LAUNCH(blocks_for(B * H), kPointwiseThreads, 0, stream,
                     backward_step_kernel<scalar_t, kCell>)(step);
      FASTRNN_CHECK_LAUNCH("backward_step_kernel");
      // dh_carry (the direct part, or the carried gradient at padded rows) += dgh W_hh
      gemm(handle, B, R, GH, {dgh + t * B * GH, dt, GH, false}, {w_hh, dt, R, false}, 1.0f,
           dh_carry, CUDA_R_32F, R, p.allow_tf32);
      if (a.resets) {  // no gradient flows into a state replaced by zeros
        FASTRNN_LAUNCH(blocks_for(B * R), kPointwiseThreads, 0, stream,
                       zero_fresh_rows_kernel<float>)(dh_carry, t, 1, R, resets);
        FASTRNN_CHECK_LAUNCH("zero_fresh_rows_kernel");
      }
    }
  }
  FASTRNN_LAUNCH(blocks_for(B * R), kPointwiseThreads, 0, stream, narrow_kernel<scalar_t>)(
      dh_carry, static_cast<scalar_t*>(a.dh0), B * R);
  FASTRNN_CHECK_LAUNCH("narrow_kernel");
  if constexpr (kC) {
    FASTRNN_LAUNCH(blocks_for(B * H), kPointwiseThreads, 0, stream, narrow_kernel<scalar_t>)(
        dc_carry, static_cast<scalar_t*>(a.dc0), B * H);
    FASTRNN_CHECK_LAUNCH("narrow_kernel");
  }

  // 2. Everything applied at all steps, as GEMMs over all T*B rows.
  const int64_t rows = T * B;
  gemm(handle, rows, I, GH, {dgx, dt, GH, false}, {a.w_ih, dt, I, false}, 0.0f, a.dx, dt, I,
       p.allow_tf32);
  gemm(handle, GH, I, rows, {dgx, dt, GH, true}, {a.x, dt, I, false}, 0.0f, a.dw_ih, dt, I,
       p.allow_tf32);
  if (a.db_ih) {
    const dim3 block(kSumColumns, kSumRows);
    const unsigned grid = blocks_for(GH, kSumColumns);
    FASTRNN_LAUNCH(grid, block, 0, stream, column_sum_kernel<scalar_t>)(
        dgx, rows, GH, static_cast<scalar_t*>(a.db_ih));
    FASTRNN_CHECK_LAUNCH("column_sum_kernel");
    FASTRNN_LAUNCH(grid, block, 0, stream, column_sum_kernel<scalar_t>)(
        dgh, rows, GH, static_cast<scalar_t*>(a.db_hh));
    FASTRNN_CHECK_LAUNCH("column_sum_kernel");
  }
  // dW_hh = dgh^T h_prev over all steps. Where a step started from zeros, its h_prev row counts
  // as zeros: the same product comes from zeroing that row of dgh instead (the reserve keeps the
  // true states), which its other readers -- dx, dW_ih and the bias sums above -- no longer need.
  if (a.resets) {
    FASTRNN_LAUNCH(blocks_for(rows * GH), kPointwiseThreads, 0, stream,
                   zero_fresh_rows_kernel<scalar_t>)(dgh, 0, T, GH, resets);
    FASTRNN_CHECK_LAUNCH("zero_fresh_rows_kernel");
  }
  const scalar_t* h_prev_all = hs + (s.reverse ? B * R : 0);  // slots 0..T-1, or 1..T in reverse
  gemm(handle, GH, R, rows, {dgh, dt, GH, true}, {h_prev_all, dt, R, false}, 0.0f, a.dw_hh, dt,
       R, p.allow_tf32);
  if (projected) {
    gemm(handle, P, H, rows, {dh_out, dt, P, true},
         {at_bytes<scalar_t>(a.reserve, rl.ms), dt, H, false}, 0.0f, a.dw_hr, dt, H,
         p.allow_tf32);
  }
}

// ---- per-dtype entry points (defined in layer_<dtype>.cu) ---------------------------------------

template <typename scalar_t>
void forward_typed(const Problem& p, const ForwardPtrs& a, Algo algo) {
  dispatch_cell(p.shape.cell, [&](auto cell) {
    forward_layer<scalar_t, decltype(cell)::value>(p, a, algo);
  });
}

template <typename scalar_t>
void backward_typed(const Problem& p, const BackwardPtrs& a, Algo algo) {
  dispatch_cell(p.shape.cell, [&](auto cell) {
    backward_layer<scalar_t, decltype(cell)::value>(p, a, algo);
  });
}

template <typename scalar_t>
PersistentPlan plan_typed(const Problem& p) {
  return dispatch_cell(p.shape.cell, [&](auto cell) {
    return plan_persistent<scalar_t, decltype(cell)::value>(p);
  });
}

#define FASTRNN_INSTANTIATE_CUDA_LAYER(scalar_t)                                      \
  template void forward_typed<scalar_t>(const Problem&, const ForwardPtrs&, Algo);    \
  template void backward_typed<scalar_t>(const Problem&, const BackwardPtrs&, Algo);  \
  template PersistentPlan plan_typed<scalar_t>(const Problem&);

}  // namespace fastrnn::cuda
