// Machine ceilings measured the way the kernels run, for the benchmark's floor (bench.py):
// GEMM throughput through fastrnn's BLAS, and read bandwidth of fastrnn's thread team.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/blas.h"
#include "cpu/packed_gemm.h"
#include "cpu/thread_team.h"
#include "fastrnn/fastrnn.h"

namespace fastrnn {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

template <typename scalar_t>
double gemm_gflops(int64_t n, int reps) {
  std::vector<scalar_t> a(n * n, scalar_t(1) / n), b(n * n, scalar_t(1) / n), c(n * n);
  double best = 0;
  for (int r = 0; r < reps + 1; ++r) {  // the first run warms up
    const auto t0 = Clock::now();
    cpu::gemm<scalar_t>(false, true, n, n, n, 1, a.data(), n, b.data(), n, 0, c.data(), n);
    if (r > 0) best = std::max(best, 2.0 * n * n * n / seconds_since(t0) / 1e9);
  }
  return best;
}

struct ReadSlice {
  const float* data;
  int64_t n;
  int passes;
  float* sink;
};

// Sums a slice `passes` times with the widest vectors (4 independent accumulators).
struct ReadKernel {
  template <cpu::Isa kIsa>
  static FASTRNN_INLINE void run(const ReadSlice& s) {
    using S = cpu::Simd<float, kIsa>;
    using vec = typename S::vec;
    constexpr int V = S::V;
    vec acc[4] = {};
    for (int p = 0; p < s.passes; ++p)
      for (int64_t i = 0; i + 4 * V <= s.n; i += 4 * V)
        for (int u = 0; u < 4; ++u) acc[u] += *reinterpret_cast<const vec*>(s.data + i + u * V);
    vec total = acc[0] + acc[1] + acc[2] + acc[3];
    float sum = 0;
    for (int v = 0; v < V; ++v) sum += total[v];
    *s.sink = sum;  // keeps the loads alive
  }
};

}  // namespace

double measure_gemm_gflops(bool float64, int64_t n, int reps) {
  if (n < 1 || n > 16384) throw std::invalid_argument("n: expected 1..16384, got " + std::to_string(n));
  if (reps < 1) throw std::invalid_argument("reps: expected >= 1, got " + std::to_string(reps));
  return float64 ? gemm_gflops<double>(n, reps) : gemm_gflops<float>(n, reps);
}

double measure_read_gbs(int64_t bytes, int reps) {
  if (bytes < 4096 || bytes > (int64_t(1) << 34))
    throw std::invalid_argument("nbytes: expected 4096 .. 2**34, got " + std::to_string(bytes));
  if (reps < 1) throw std::invalid_argument("reps: expected >= 1, got " + std::to_string(reps));
  const int threads = cpu::team_threads();
  const int64_t per_thread = std::max<int64_t>(256, bytes / 4 / threads / 256 * 256);
  std::vector<float> buffer(per_thread * threads, 1.0f);
  std::vector<float> sinks(threads * 16);
  // Enough passes for ~2 ms at 100 GB/s, so that the team's start-up is noise.
  const int passes = static_cast<int>(std::max<int64_t>(1, 200'000'000 / (per_thread * 4 * threads)));
  double best = 0;
  for (int r = 0; r < reps + 1; ++r) {
    const auto t0 = Clock::now();
    cpu::run_team(threads, [&](int member, int size) {
      // A short team (pool busy) reads every slice on its members.
      for (int slice = member; slice < threads; slice += size)
        cpu::run_on_isa_tagged<ReadKernel>(
            cpu::active_isa(),
            ReadSlice{buffer.data() + slice * per_thread, per_thread, passes, &sinks[slice * 16]});
    });
    const double s = seconds_since(t0);
    if (r > 0) best = std::max(best, double(per_thread) * 4 * threads * passes / s / 1e9);
  }
  return best;
}

}  // namespace fastrnn
