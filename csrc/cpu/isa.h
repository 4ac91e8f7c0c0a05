// Which vector instruction set the pointwise kernels use, chosen once at run time.
// One build runs on any x86-64: the step kernels are compiled three times (baseline SSE2, AVX2+FMA,
// AVX-512) through function target attributes, and the best one the CPU and OS support is used.
// FASTRNN_ISA=baseline|avx2|avx512 lowers the choice (tests use it to check every variant).
#pragma once

#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

namespace fastrnn::cpu {

enum class Isa : int { Baseline = 0, Avx2 = 1, Avx512 = 2 };

#if defined(__x86_64__) && defined(__GNUC__)
#define FASTRNN_MULTI_ISA 1
#define FASTRNN_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define FASTRNN_TARGET_AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma")))
#endif

inline Isa best_supported_isa() {
#ifdef FASTRNN_MULTI_ISA
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw"))
    return Isa::Avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::Avx2;
#endif
  return Isa::Baseline;
}

inline Isa isa_from_env(Isa best) {
  const char* v = std::getenv("FASTRNN_ISA");
  if (v == nullptr || *v == '\0') return best;
  Isa asked = best;
  if (std::strcmp(v, "baseline") == 0) asked = Isa::Baseline;
  else if (std::strcmp(v, "avx2") == 0) asked = Isa::Avx2;
  else if (std::strcmp(v, "avx512") == 0) asked = Isa::Avx512;
  return static_cast<int>(asked) < static_cast<int>(best) ? asked : best;  // never above the CPU
}

// Decided once per process (thread-safe static initialisation).
inline Isa active_isa() {
  static const Isa isa = isa_from_env(best_supported_isa());
  return isa;
}

inline const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Baseline: return "baseline";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
  }
  return "unknown";
}

// Runs Kernel::run(args) compiled for `isa`. Kernel::run must be force-inlined (FASTRNN_INLINE)
// so that its body, and every loop in it, is generated inside each target-specific wrapper.
template <typename Kernel, typename Args>
void run_baseline(const Args& args) { Kernel::run(args); }
#ifdef FASTRNN_MULTI_ISA
template <typename Kernel, typename Args>
FASTRNN_TARGET_AVX2 void run_avx2(const Args& args) { Kernel::run(args); }
template <typename Kernel, typename Args>
FASTRNN_TARGET_AVX512 void run_avx512(const Args& args) { Kernel::run(args); }
#endif

template <typename Kernel, typename Args>
void run_on_isa(Isa isa, const Args& args) {
  switch (isa) {
#ifdef FASTRNN_MULTI_ISA
    case Isa::Avx512: return run_avx512<Kernel>(args);
    case Isa::Avx2: return run_avx2<Kernel>(args);
#endif
    case Isa::Baseline: return run_baseline<Kernel>(args);
    default: break;
  }
  throw std::logic_error(std::string("fastrnn: no kernel compiled for instruction set ") +
                         isa_name(isa));
}

// The same for kernels that need the instruction set at compile time (vector widths, register
// budgets): runs Kernel::template run<isa>(args).
template <typename Kernel, typename Args>
void run_baseline_tagged(const Args& args) { Kernel::template run<Isa::Baseline>(args); }
#ifdef FASTRNN_MULTI_ISA
template <typename Kernel, typename Args>
FASTRNN_TARGET_AVX2 void run_avx2_tagged(const Args& args) {
  Kernel::template run<Isa::Avx2>(args);
}
template <typename Kernel, typename Args>
FASTRNN_TARGET_AVX512 void run_avx512_tagged(const Args& args) {
  Kernel::template run<Isa::Avx512>(args);
}
#endif

template <typename Kernel, typename Args>
void run_on_isa_tagged(Isa isa, const Args& args) {
  switch (isa) {
#ifdef FASTRNN_MULTI_ISA
    case Isa::Avx512: return run_avx512_tagged<Kernel>(args);
    case Isa::Avx2: return run_avx2_tagged<Kernel>(args);
#endif
    case Isa::Baseline: return run_baseline_tagged<Kernel>(args);
    default: break;
  }
  throw std::logic_error(std::string("fastrnn: no kernel compiled for instruction set ") +
                         isa_name(isa));
}

}  // namespace fastrnn::cpu
