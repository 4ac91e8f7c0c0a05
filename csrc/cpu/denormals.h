// Flush denormals to zero for the duration of a kernel call (docs/design.md §4): denormal
// arithmetic is ~100x slower on x86 and carries no information an RNN needs.
#pragma once

#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#define FASTRNN_HAVE_MXCSR 1
#endif

namespace fastrnn::cpu {

class DenormalsAreZero {
 public:
#ifdef FASTRNN_HAVE_MXCSR
  static constexpr unsigned kFlushBits = 0x8040;  // FTZ (bit 15) | DAZ (bit 6)
  DenormalsAreZero() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | kFlushBits); }
  ~DenormalsAreZero() { _mm_setcsr(saved_); }
 private:
  unsigned saved_;
#else
  DenormalsAreZero() = default;
#endif
 public:
  DenormalsAreZero(const DenormalsAreZero&) = delete;
  DenormalsAreZero& operator=(const DenormalsAreZero&) = delete;
};

}  // namespace fastrnn::cpu
