// Gate activations written as straight-line arithmetic, so the compiler vectorises the cell
// loops that use them (libm's scalar tanh/exp cost ~15 ns each and dominated the step).
//
// One kernel underlies all three: expm1 by Cody-Waite range reduction, x = n ln2 + r with
// |r| <= ln2/2, and a Taylor polynomial for expm1(r) (degree 8 for float, 14 for double, both
// truncating below half an ulp), then expm1(x) = 2^n expm1(r) + (2^n - 1), exact in the last
// step for the n that matter. From it:
//   sigmoid(x) = 1 / (1 + exp(-x))          tanh(x) = e / (e + 2),  e = expm1(2x)
// The tanh form keeps full relative accuracy near 0 (no 1 - 2/(1+exp) cancellation).
// Measured against long double libm over the whole input range by tests/test_activations.py:
// at most 2.8 ulp (float32 and float64, every instruction-set variant; the test asserts 3).
// Inputs are clamped where the result is already saturated; NaN passes through every step.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__GNUC__)
#define FASTRNN_INLINE inline __attribute__((always_inline))
#define FASTRNN_RESTRICT __restrict__
// The cell loops read and write distinct arrays at the same index: tell the vectoriser so
// (restrict on locals is lost once these functions are inlined, and the alias checks it would
// otherwise need exceed its limit, leaving the LSTM and GRU loops scalar).
#if defined(__clang__)
#define FASTRNN_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#else
#define FASTRNN_IVDEP _Pragma("GCC ivdep")
#endif
#else
#define FASTRNN_IVDEP
#define FASTRNN_INLINE inline
#define FASTRNN_RESTRICT
#endif

namespace fastrnn::cpu {

template <typename scalar_t>
struct FloatTraits;

template <>
struct FloatTraits<float> {
  using Bits = uint32_t;
  static constexpr int kMantissa = 23;
  static constexpr Bits kBias = 127;
  static constexpr float kShifter = 0x1.8p23f;      // adding it rounds to an integer
  static constexpr float kLog2e = 1.44269504088896341f;
  static constexpr float kLn2Hi = 0.693359375f;     // few mantissa bits: n * kLn2Hi is exact
  static constexpr float kLn2Lo = -2.12194440e-4f;
  static constexpr float kExpArgMax = 87.3365f;     // -ln(FLT_MIN): below it, flushed to 0
  static constexpr float kTanhArgMax = 10.0f;       // tanh(10) rounds to 1 in float
};

template <>
struct FloatTraits<double> {
  using Bits = uint64_t;
  static constexpr int kMantissa = 52;
  static constexpr Bits kBias = 1023;
  static constexpr double kShifter = 0x1.8p52;
  static constexpr double kLog2e = 1.44269504088896340736;
  static constexpr double kLn2Hi = 6.93147180369123816490e-01;  // fdlibm's split of ln 2
  static constexpr double kLn2Lo = 1.90821492927058770002e-10;
  static constexpr double kExpArgMax = 708.3964185;  // -ln(DBL_MIN): below it, flushed to 0
  static constexpr double kTanhArgMax = 20.0;       // tanh(20) rounds to 1 in double
};

// Reinterprets the bits of one value as another type of the same size (std::bit_cast is C++20;
// memcpy compiles to a register move and keeps the loops vectorisable).
template <typename To, typename From>
FASTRNN_INLINE To bits_as(From v) {
  static_assert(sizeof(To) == sizeof(From), "bits_as: sizes differ");
  To out;
  std::memcpy(&out, &v, sizeof(To));
  return out;
}

// Clamp into [-limit, limit]; written with comparisons so that NaN passes through.
template <typename scalar_t>
FASTRNN_INLINE scalar_t clamp_sym(scalar_t x, scalar_t limit) {
  x = x > limit ? limit : x;
  return x < -limit ? -limit : x;
}

// expm1(r) for |r| <= ln2/2 by Horner on the Taylor series, truncated below half an ulp.
FASTRNN_INLINE float expm1_reduced(float r) {
  float p = 1.0f / 40320;
  p = p * r + 1.0f / 5040;
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  return (p * r) * r + r;
}

FASTRNN_INLINE double expm1_reduced(double r) {
  double p = 1.0 / 87178291200.0;  // 1/14!
  p = p * r + 1.0 / 6227020800.0;
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  return (p * r) * r + r;
}

// expm1(x) for |x| <= kExpArgMax; also returns 2^n so exp(x) = expm1 + 1 can be formed exactly.
template <typename scalar_t>
FASTRNN_INLINE scalar_t expm1_bounded(scalar_t x) {
  using F = FloatTraits<scalar_t>;
  using Bits = typename F::Bits;
  const scalar_t shifted = x * F::kLog2e + F::kShifter;   // round(x / ln2) in the low mantissa bits
  const scalar_t n = shifted - F::kShifter;
  const scalar_t r = (x - n * F::kLn2Hi) - n * F::kLn2Lo;
  const Bits n_bits = bits_as<Bits>(shifted);
  const scalar_t scale = bits_as<scalar_t>(static_cast<Bits>((n_bits + F::kBias) << F::kMantissa));
  return scale * expm1_reduced(r) + (scale - scalar_t(1));
}

template <typename scalar_t>
FASTRNN_INLINE scalar_t fast_sigmoid(scalar_t x) {
  const scalar_t limit = FloatTraits<scalar_t>::kExpArgMax;
  const scalar_t e = expm1_bounded(clamp_sym(-x, limit));
  const scalar_t s = scalar_t(1) / (scalar_t(2) + e);  // 1 / (1 + exp(-x))
  return x < -limit ? scalar_t(0) : s;   // the true value is subnormal: flushed, as FTZ would
}

template <typename scalar_t>
FASTRNN_INLINE scalar_t fast_tanh(scalar_t x) {
  const scalar_t e = expm1_bounded(scalar_t(2) * clamp_sym(x, FloatTraits<scalar_t>::kTanhArgMax));
  return __builtin_copysign(e / (e + scalar_t(2)), x);  // odd function: keeps the sign of -0
}

}  // namespace fastrnn::cpu
