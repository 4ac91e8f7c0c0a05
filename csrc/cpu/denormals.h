// Flush denormals to zero while fastrnn does float work (docs/design.md §4): denormal arithmetic
// is ~100x slower on x86 and carries no information an RNN needs.
//
// How subnormals are treated: subnormal (denormal) numbers -- magnitudes below 2^-126 ~ 1.2e-38
// in float32 and 2^-1022 ~ 2.2e-308 in float64 -- count as zero in fastrnn's CPU computations,
// whether they are inputs, weights or intermediate results: inputs are read as zero (DAZ) and
// results that would be subnormal are written as zero (FTZ). The NumPy reference keeps them, so
// the two differ by at most a subnormal's magnitude times the weights it meets, far below the
// float32/float64 test tolerances; deterministic mode is bitwise identical across thread counts
// with subnormal data as with any other.
//
// Where the flags are set: the entry points (layer forward/backward, apply_activation) hold a
// DenormalsAreZero on the calling thread for the whole call, and every thread that works for the
// caller runs in the caller's mode (FlushModeOf below): run_team applies it to each member of a
// team (the recurrence, deterministic mode's BLAS blocks, the bias gradients' column sums, the
// BLAS library's jobs), and the BLAS jobs that get threads of their own take it too
// (blas_threads.cpp). OpenBLAS runs no job on threads of its own: its threads callback sends
// every parallel job of every call to run_team. The flags are restored afterwards on every
// thread, so the caller's floating-point environment, and the threads' own, are untouched.
#pragma once

#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#define FASTRNN_HAVE_MXCSR 1
#endif

namespace fastrnn::cpu {

// FTZ (bit 15) | DAZ (bit 6) of MXCSR; 0 where there is no MXCSR (the flags are not set there).
#ifdef FASTRNN_HAVE_MXCSR
inline constexpr unsigned kFlushBits = 0x8040;
inline unsigned flush_bits_of_this_thread() { return _mm_getcsr() & kFlushBits; }
#else
inline constexpr unsigned kFlushBits = 0;
inline unsigned flush_bits_of_this_thread() { return 0; }
#endif

// This thread's flush bits set to `bits` (a flush_bits_of_this_thread() value, possibly another
// thread's) for the object's lifetime; MXCSR as it was (status flags included) afterwards.
class FlushModeOf {
 public:
#ifdef FASTRNN_HAVE_MXCSR
  explicit FlushModeOf(unsigned bits) : saved_(_mm_getcsr()) {
    _mm_setcsr((saved_ & ~kFlushBits) | (bits & kFlushBits));
  }
  ~FlushModeOf() { _mm_setcsr(saved_); }

 private:
  unsigned saved_;
#else
  explicit FlushModeOf(unsigned /*bits*/) {}
#endif

 public:
  FlushModeOf(const FlushModeOf&) = delete;
  FlushModeOf& operator=(const FlushModeOf&) = delete;
};

// Flush to zero on this thread for the object's lifetime: fastrnn's entry points.
class DenormalsAreZero : public FlushModeOf {
 public:
  DenormalsAreZero() : FlushModeOf(kFlushBits) {}
};

}  // namespace fastrnn::cpu
