// fastrnn public C++ interface: one recurrent layer, one direction, a whole sequence.
//
// Shape legend (every sequence tensor is time-major and C-contiguous):
//   T  steps           B  batch            I  input size
//   H  hidden size     G  gates: 1 (vanilla), 4 (LSTM: i,f,g,o), 3 (GRU: r,z,n); cell.h
//   P  LSTM projection size (proj_size; 0 = none)
//   R  size of the recurrent state h and of the output: P if P > 0, else H
//
// Conventions are PyTorch's (see docs/design.md §1), so weights move across unchanged.
// Variable lengths: steps t >= lengths[b] leave the state untouched and write zeros to y;
// the reverse direction walks t = T-1 .. 0, so sequence b starts at lengths[b]-1.
// State resets: resets[t][b] splits sequence b before step t; each segment runs from zeros
// (the exact rule, both walks: common/resets.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "fastrnn/cell.h"

namespace fastrnn {

struct LayerShape {
  Cell cell;
  int64_t T, B, I, H;
  bool reverse;   // walk t = T-1 .. 0
  int64_t P = 0;  // LSTM projection: h = W_hr (o * tanh(c)), W_hr (P, H); 0 = none
  int64_t gate_width() const { return num_gates(cell) * H; }
  int64_t R() const { return P > 0 ? P : H; }
};

// Saved state ("reserve") written by a training forward and read by backward. Sizes in elements:
//   hs     (T+1, B, R)  hidden state before/after every step, in time order, with h0 at slot 0
//                       (forward) or slot T (reverse); padded steps carry the state.
//   cs     (T+1, B, H)  the same for the LSTM cell state (absent for other cells)
//   acts   (T, B, S*H)  saved activations: LSTM i,f,g,o (S=4); GRU r,z,n and W_hn h + b_hn (S=4);
//                       vanilla nothing (S=0: derivatives come from hs)
//   ms     (T, B, H)    LSTM with projection only: o * tanh(c) before W_hr (0 at padded steps)
int64_t reserve_elements(const LayerShape& s);
// The same size as rows: (T+1)*B rows of `per_slot` elements (hs, cs) and T*B rows of `per_step`
// elements (acts, ms), so that callers (e.g. shape inference under torch.compile) can compute it
// for symbolic T and B.
struct ReserveWidths {
  int64_t per_slot;
  int64_t per_step;
};
ReserveWidths reserve_widths(const LayerShape& s);
// Scratch used inside one call (forward or backward), in elements.
int64_t forward_workspace_elements(const LayerShape& s, bool training);
int64_t backward_workspace_elements(const LayerShape& s);

// Forward. Every pointer is C-contiguous; none may alias another except as stated.
template <typename scalar_t>
struct ForwardArgs {
  LayerShape shape;
  const scalar_t* x;          // (T, B, I)                    in
  const scalar_t* h0;         // (B, R)                       in
  const scalar_t* c0;         // (B, H) LSTM, else nullptr    in
  const scalar_t* w_ih;       // (G*H, I)                     in
  const scalar_t* w_hh;       // (G*H, R)                     in
  const scalar_t* b_ih;       // (G*H) or nullptr (no bias)   in
  const scalar_t* b_hh;       // (G*H) or nullptr (no bias)   in
  const scalar_t* w_hr;       // (P, H) when P > 0, else nullptr   in
  const int64_t* lengths;     // (B) in [1, T], or nullptr     in
  const uint8_t* resets;      // (T, B) 0 or 1, or nullptr (none; common/resets.h)   in
  scalar_t* y;                // (T, B, R)                    out
  scalar_t* h_n;              // (B, R)                       out
  scalar_t* c_n;              // (B, H) LSTM, else nullptr    out
  scalar_t* reserve;          // reserve_elements(), or nullptr for inference   out
  scalar_t* workspace;        // forward_workspace_elements(shape, reserve != nullptr)
};

// Backward through time. Extends the forward arguments with the incoming and outgoing gradients.
template <typename scalar_t>
struct BackwardArgs : ForwardArgs<scalar_t> {
  const scalar_t* dy;         // (T, B, R); entries at padded steps are ignored   in
  const scalar_t* dh_n;       // (B, R) or nullptr (zeros)     in
  const scalar_t* dc_n;       // (B, H) or nullptr (zeros)     in
  scalar_t* dx;               // (T, B, I)                     out
  scalar_t* dh0;              // (B, R)                        out
  scalar_t* dc0;              // (B, H) LSTM, else nullptr     out
  scalar_t* dw_ih;            // (G*H, I)                      out
  scalar_t* dw_hh;            // (G*H, R)                      out
  scalar_t* db_ih;            // (G*H) or nullptr              out
  scalar_t* db_hh;            // (G*H) or nullptr              out
  scalar_t* dw_hr;            // (P, H) when P > 0, else nullptr   out
  // Set dgates to receive what the weight gradients are made of instead of them (dw_*, db_* are
  // then not written and may be nullptr): a caller with several problems folded into one batch
  // (fastrnn.torch's vmap rules) forms each problem's weight gradients from its own rows.
  scalar_t* dgates = nullptr;    // (T, B, G*H) pre-activation gradients (0 at padded steps)  out
  scalar_t* dgates_h = nullptr;  // (T, B, H) kRecurrentGradGate's recurrent part (GRU), else
                                 // nullptr; its rows of dW_hh and db_hh come from these   out
  scalar_t* dh_proj = nullptr;   // (T, B, R) gradient of the projected output (P > 0), the
                                 // left factor of dW_hr                                    out
};

template <typename scalar_t>
void layer_forward(const ForwardArgs<scalar_t>& args);
template <typename scalar_t>
void layer_backward(const BackwardArgs<scalar_t>& args);

// The vectorised gate activations the kernels use, exposed so their accuracy can be tested:
// y[k] = sigmoid(x[k]) or tanh(x[k]) for k < n, computed by the active instruction set's code.
enum class Activation : int { Sigmoid = 0, Tanh = 1 };
template <typename scalar_t>
void apply_activation(Activation kind, const scalar_t* x, scalar_t* y, int64_t n);

// Threads used by the CPU kernels and the BLAS library, process-wide (default: OMP_NUM_THREADS,
// else the CPUs this process may run on).
void set_num_threads(int n);
int get_num_threads();

// Deterministic mode: results bitwise identical for any thread count (the kernels' own work
// already is; this makes the BLAS library's products so too, see cpu/blas.h), at some cost in
// speed for the large GEMMs. Off by default.
void set_deterministic(bool enabled);
bool get_deterministic();

// Run fastrnn's parallel work -- its kernels' thread teams and the BLAS library's jobs -- on the
// OpenMP runtime at `library_path` (one the process has already loaded: a host framework's pool,
// PyTorch's libgomp) instead of fastrnn's own threads, so that host and fastrnn share one pool.
// "" goes back to fastrnn's own threads. Call it when no fastrnn call is running. thread_pool()
// names the current choice: "fastrnn" or "OpenMP runtime <path>".
void run_threads_on_openmp(const std::string& library_path);
std::string thread_pool();

// Machine ceilings measured the way the kernels run (the benchmark's floor): the best GFLOP/s of
// an n x n x n GEMM through fastrnn's BLAS with the current threads (reps timed runs after one
// warm-up), and the best GB/s of the thread team reading a buffer of `bytes` (each thread its own
// slice, many passes: the bandwidth of the cache level that holds that many bytes).
double measure_gemm_gflops(bool float64, int64_t n, int reps);
double measure_read_gbs(int64_t bytes, int reps);

// What this build contains.
std::string active_isa();                  // instruction set the pointwise kernels run with
std::vector<std::string> compiled_isas();  // every instruction set compiled in
std::string blas_name();
std::string blas_config();
std::string compiler_name();

}  // namespace fastrnn
