// The threads fastrnn's CPU kernels run on: one pool per process, shared with the BLAS library.
//
// run_team(n, body) runs body(member, size) on n threads at once and returns when all are done.
// The recurrence keeps one team for a whole sequence (each member owns a slice of hidden units
// and of W_hh, members meet at one SpinBarrier per step), and OpenBLAS's parallel jobs run on
// the same threads (blas_threads.cpp), so the process never has two pools spinning against each
// other. The threads are fastrnn's own (workers that spin briefly, then sleep), or, once
// run_threads_on_openmp has named one, the host's OpenMP runtime (PyTorch's libgomp).
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FASTRNN_CPU_RELAX() _mm_pause()
#else
#define FASTRNN_CPU_RELAX() ((void)0)
#endif

namespace fastrnn::cpu {

using TeamBody = void (*)(void* context, int member, int size);

// Runs body(context, member, size) for member = 0 .. size-1 concurrently, the caller being member
// 0. `size` may come out smaller than asked (the pool is busy with another caller's team, or the
// host runtime is inside a parallel region): bodies must use the size they are given. Every
// member runs in the caller's denormal mode (flush-to-zero bits, denormals.h).
void run_team(int size, TeamBody body, void* context);

// Team bodies must not throw: the other members may be waiting for this one at a barrier (and
// BLAS jobs run inside OpenBLAS's C frames), so an exception ends the process (noexcept) rather
// than leaving a team half-run.
template <typename F>
void run_team(int size, F&& fn) {
  using Fn = std::remove_reference_t<F>;
  run_team(size, [](void* c, int member, int n) noexcept { (*static_cast<Fn*>(c))(member, n); },
           const_cast<void*>(static_cast<const void*>(&fn)));
}

// Threads the kernels use (fastrnn.set_num_threads; default OMP_NUM_THREADS, else the CPUs this
// process may run on).
int team_threads();
void set_team_threads(int n);

// Runs team work on the OpenMP runtime whose GOMP_parallel / omp_get_thread_num /
// omp_get_num_threads are given, or on fastrnn's own workers (all nullptr).
struct OpenMpEntryPoints {
  void (*parallel)(void (*fn)(void*), void* data, unsigned num_threads, unsigned flags) = nullptr;
  int (*thread_num)() = nullptr;
  int (*num_threads)() = nullptr;
};
void use_openmp_runtime(const OpenMpEntryPoints& rt);

void yield_thread();

// Wait until pred() holds: spin (the other members are running on other cores), but yield the
// core once the wait grows long, in case a member is not running at all (oversubscription).
template <typename Pred>
inline void spin_until(Pred&& pred) {
  for (int i = 0; !pred(); ++i) {
    if (i < 4096) {
      FASTRNN_CPU_RELAX();
    } else {
      yield_thread();
    }
  }
}

// Sense-reversing barrier for the members of one team.
class SpinBarrier {
 public:
  explicit SpinBarrier(int members) : members_(members) {}
  void arrive_and_wait() {
    if (members_ == 1) return;
    // Read the phase before arriving: it cannot advance until this member has arrived.
    const unsigned phase = phase_.load(std::memory_order_relaxed);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) == members_ - 1) {
      arrived_.store(0, std::memory_order_relaxed);
      phase_.store(phase + 1, std::memory_order_release);
      return;
    }
    spin_until([&] { return phase_.load(std::memory_order_acquire) != phase; });
  }

 private:
  alignas(64) std::atomic<int> arrived_{0};
  alignas(64) std::atomic<unsigned> phase_{0};
  const int members_;
};

// Splits `count` items into `parts` contiguous ranges, as evenly as possible: part p gets
// [begin(p), begin(p+1)).
struct EvenSplit {
  int64_t count;
  int parts;
  int64_t begin(int p) const { return count * p / parts; }
};

}  // namespace fastrnn::cpu
