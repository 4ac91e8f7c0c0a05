// What this build contains, and the activation entry point used by the accuracy tests.
#include "cpu/activations.h"
#include "cpu/blas.h"
#include "cpu/denormals.h"
#include "cpu/isa.h"
#include "cpu/thread_team.h"
#include "fastrnn/fastrnn.h"

#include <atomic>
#include <mutex>

namespace fastrnn {

namespace {

template <typename scalar_t>
struct ActivationArgs {
  Activation kind;
  const scalar_t* x;
  scalar_t* y;
  int64_t n;
};

template <typename scalar_t>
struct ActivationKernel {
  static FASTRNN_INLINE void run(const ActivationArgs<scalar_t>& a) {
    const scalar_t* FASTRNN_RESTRICT x = a.x;
    scalar_t* FASTRNN_RESTRICT y = a.y;
    if (a.kind == Activation::Sigmoid) {
      for (int64_t k = 0; k < a.n; ++k) y[k] = cpu::fast_sigmoid(x[k]);
    } else {
      for (int64_t k = 0; k < a.n; ++k) y[k] = cpu::fast_tanh(x[k]);
    }
  }
};

}  // namespace

template <typename scalar_t>
void apply_activation(Activation kind, const scalar_t* x, scalar_t* y, int64_t n) {
  if (kind != Activation::Sigmoid && kind != Activation::Tanh)
    throw std::invalid_argument("fastrnn: unknown activation " + std::to_string(static_cast<int>(kind)));
  cpu::DenormalsAreZero ftz;  // as inside the layer kernels
  cpu::run_on_isa<ActivationKernel<scalar_t>>(cpu::active_isa(), ActivationArgs<scalar_t>{kind, x, y, n});
}
template void apply_activation<float>(Activation, const float*, float*, int64_t);
template void apply_activation<double>(Activation, const double*, double*, int64_t);

namespace {
std::atomic<bool> g_deterministic{false};
std::mutex g_threads_mutex;  // set_num_threads and set_deterministic change two settings together
}  // namespace

bool cpu::deterministic_products() { return g_deterministic.load(std::memory_order_relaxed); }

// In deterministic mode the BLAS library runs single-threaded: gemm() splits products itself
// (blas.h); otherwise its parallel jobs use the same count as the team (they run on its pool).
void set_num_threads(int n) {
  std::lock_guard<std::mutex> lock(g_threads_mutex);
  cpu::set_team_threads(n);  // validates n
  cpu::blas_set_num_threads(g_deterministic.load() ? 1 : n);
}
int get_num_threads() { return cpu::team_threads(); }

void set_deterministic(bool enabled) {
  std::lock_guard<std::mutex> lock(g_threads_mutex);
  g_deterministic.store(enabled);
  cpu::blas_set_num_threads(enabled ? 1 : cpu::team_threads());
}
bool get_deterministic() { return g_deterministic.load(); }

std::string active_isa() { return cpu::isa_name(cpu::active_isa()); }

std::vector<std::string> compiled_isas() {
#ifdef FASTRNN_MULTI_ISA
  return {"baseline", "avx2", "avx512"};
#else
  return {"baseline"};
#endif
}

std::string blas_name() { return "OpenBLAS (scipy-openblas32)"; }
std::string blas_config() { return cpu::blas_library_config(); }

std::string compiler_name() {
#if defined(__clang__)
  return "clang " __clang_version__;
#elif defined(__GNUC__)
  return "gcc " __VERSION__;
#else
  return "unknown";
#endif
}

}  // namespace fastrnn
