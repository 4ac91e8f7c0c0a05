// fastrnn CUDA interface: the CPU core's entry points (fastrnn.h) on an NVIDIA GPU.
//
// Same shapes, conventions, weights and results as fastrnn.h (read its shape legend first); what
// differs:
//   - every pointer is device memory on `device`, and all work is queued on `stream` (the
//     caller's: torch's current stream, CuPy's, ...); nothing synchronises the host except the
//     errors that CUDA reports synchronously;
//   - data come in three types (DType): float32, float16, bfloat16. Half types compute with
//     float32 accumulation and keep the LSTM cell state in float32;
//   - `lengths` is a device array of int64 (B), each in [1, T] (the caller checks the range);
//   - `resets` is a device array of bytes (T, B), each 0 or 1: where the state is replaced by
//     zeros, by the one rule of both backends (common/resets.h, starts_fresh); the reserve keeps
//     the states as the steps computed them, so its layout and size do not depend on it;
//   - the reserve and the workspace are raw bytes (sizes below), caller-allocated, 256-byte
//     aligned (what cudaMalloc and torch's allocator give);
//   - `algo` picks how the recurrence runs (Algo below); the reserve layout does not depend on
//     it, so a forward run with one algo can be differentiated with another.
// This header needs no CUDA header: streams travel as void* (a cudaStream_t), so the Python
// binding compiles with the host compiler alone. Errors are thrown as fastrnn::cuda::Error.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "fastrnn/fastrnn.h"

namespace fastrnn::cuda {

enum class DType : int { Float32 = 0, Float16 = 1, BFloat16 = 2 };
size_t dtype_size(DType dtype);

// standard: one cuBLAS GEMM per step for the recurrent product, one fused pointwise kernel.
// persistent: one cooperative kernel for the whole recurrence; each block keeps its slice of
//   W_hh in shared memory across all steps, one grid-wide barrier per step. Fits small batches
//   (B <= kPersistentMaxBatch) and W_hh that fits in the GPU's shared memory; no projection.
// auto: persistent where it fits and is expected faster (see choose_algo), else standard.
enum class Algo : int { Standard = 0, Persistent = 1, Auto = 2 };
constexpr int64_t kPersistentMaxBatch = 16;

// A CUDA or cuBLAS call failed (the message names the call, the error and the operation), or a
// request cannot run on this device (the message says why).
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Problem {
  LayerShape shape;
  DType dtype;
  int device;
  void* stream;      // cudaStream_t; nullptr = the legacy default stream
  bool allow_tf32;   // float32 GEMMs may use TF32 tensor cores (torch's allow_tf32)
  Algo algo;
};

// Reserve, in bytes: (T+1)*B*per_slot + T*B*per_step, as for the CPU core (fastrnn.h), so that
// callers can size it for symbolic T and B. Its layout is in cuda/layout.cuh.
ReserveWidths reserve_width_bytes(const LayerShape& s, DType dtype);
int64_t reserve_bytes(const LayerShape& s, DType dtype);
// Scratch bytes of one call with this algo (already resolved: Standard or Persistent).
int64_t forward_workspace_bytes(const LayerShape& s, DType dtype, bool training, Algo algo);
int64_t backward_workspace_bytes(const LayerShape& s, DType dtype, Algo algo);

// The algo a Problem runs with: Standard or Persistent. Throws Error when Persistent is asked
// for and the problem does not fit it on this device (the message says what does not fit).
Algo resolve_algo(const Problem& p);
// Whether the persistent kernel fits this problem on this device; when not, `why` says why.
bool persistent_fits(const Problem& p, std::string* why);

struct ForwardPtrs {
  const void* x;        // (T, B, I)
  const void* h0;       // (B, R)
  const void* c0;       // (B, H) LSTM, else nullptr
  const void* w_ih;     // (G*H, I)
  const void* w_hh;     // (G*H, R)
  const void* b_ih;     // (G*H) or nullptr (no bias; then b_hh is nullptr too)
  const void* b_hh;     // (G*H) or nullptr
  const void* w_hr;     // (P, H) or nullptr
  const int64_t* lengths;  // (B) or nullptr
  const uint8_t* resets;   // (T, B) device bytes (0 or 1) or nullptr: state resets, the CPU
                           // core's ForwardArgs::resets rule (common/resets.h)
  void* y;              // (T, B, R)             out
  void* h_n;            // (B, R)                out
  void* c_n;            // (B, H) LSTM           out
  void* reserve;        // reserve_bytes(), or nullptr for inference
  void* workspace;      // forward_workspace_bytes()
};

struct BackwardPtrs : ForwardPtrs {
  const void* dy;       // (T, B, R); entries at padded steps are ignored
  const void* dh_n;     // (B, R) or nullptr (zeros)
  const void* dc_n;     // (B, H) or nullptr (zeros)
  void* dx;             // (T, B, I)             out
  void* dh0;            // (B, R)                out
  void* dc0;            // (B, H) LSTM           out
  void* dw_ih;          // (G*H, I)              out (overwritten, not accumulated)
  void* dw_hh;          // (G*H, R)              out
  void* db_ih;          // (G*H) or nullptr      out
  void* db_hh;          // (G*H) or nullptr      out
  void* dw_hr;          // (P, H) or nullptr     out
  // `workspace` (inherited) is backward_workspace_bytes() here; the forward's y, h_n, c_n are
  // not read.
};

// Queue one layer's forward (training when ptrs.reserve != nullptr) or backward on p.stream.
void layer_forward(const Problem& p, const ForwardPtrs& ptrs);
void layer_backward(const Problem& p, const BackwardPtrs& ptrs);

// Device memory for fastrnn's own arrays (the DLPack path of the NumPy-level API). device_free
// waits for the device's queued work (cudaFree does) and never throws.
void* device_alloc(int device, int64_t bytes);
void device_free(int device, void* ptr) noexcept;
// Helpers for those arrays: a memset queued on the legacy default stream, and a synchronous copy
// from host memory.
void fill_bytes(int device, void* ptr, int value, int64_t nbytes);
void copy_from_host(int device, void* dst, const void* src, int64_t nbytes);
// Wait for all work queued on `device`.
void synchronize(int device);

// What this build and machine have.
int device_count();                      // 0 without a driver or a device; never throws
struct DeviceInfo {
  std::string name;
  int major, minor, multiprocessors;
  int64_t total_memory, l2_bytes, shared_per_block_optin, shared_per_multiprocessor;
  int memory_clock_khz, memory_bus_bits;
};
DeviceInfo device_info(int device);
int runtime_version();                   // the CUDA runtime linked in (statically)
int driver_version();                    // 0 without a driver
std::string cublas_version();
std::vector<std::string> compiled_architectures();  // e.g. {"sm_80", "sm_90"}

}  // namespace fastrnn::cuda
