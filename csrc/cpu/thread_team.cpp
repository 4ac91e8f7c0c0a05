// fastrnn's thread pool (see thread_team.h).
#include "cpu/thread_team.h"

#include "cpu/denormals.h"

#include <pthread.h>
#include <sched.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

namespace fastrnn::cpu {

void yield_thread() { sched_yield(); }

namespace {

// Idle workers spin this long before sleeping: long enough to bridge the gap between the calls
// of one layer (BLAS GEMM, recurrence, next layer) without a wake-up, short enough not to hold a
// core when fastrnn is idle.
constexpr std::chrono::microseconds kIdleSpin{200};

// Workers 1..n-1 of fastrnn's own pool; the calling thread is member 0. Every dispatch is
// acknowledged by every worker (members and the others alike), so a dispatch never starts while
// a worker may still be reading the previous one.
class Pool {
 public:
  // Returns false when another thread holds the pool (the caller then runs alone).
  bool run(int size, TeamBody body, void* context) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    grow(size - 1);
    body_ = body;
    context_ = context;
    size_ = size;
    pending_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lock(sleep_mutex_);
      generation_.store(generation_.load(std::memory_order_relaxed) + 1,
                        std::memory_order_release);
      if (sleepers_ > 0) wake_.notify_all();
    }
    body(context, 0, size);
    spin_until([&] { return pending_.load(std::memory_order_acquire) == 0; });
    return true;
  }

 private:
  void grow(int workers) {
    while (static_cast<int>(workers_.size()) < workers) {
      const int index = static_cast<int>(workers_.size()) + 1;
      const uint64_t seen = generation_.load(std::memory_order_relaxed);
      workers_.emplace_back([this, index, seen] { work(index, seen); });
      workers_.back().detach();  // the pool lives as long as the process
    }
  }

  void work(int index, uint64_t seen) {
    for (;;) {
      wait_for_dispatch(seen);
      seen = generation_.load(std::memory_order_acquire);
      if (index < size_) body_(context_, index, size_);
      pending_.fetch_sub(1, std::memory_order_release);
    }
  }

  void wait_for_dispatch(uint64_t seen) {
    auto changed = [&] { return generation_.load(std::memory_order_acquire) != seen; };
    const auto deadline = std::chrono::steady_clock::now() + kIdleSpin;
    for (int i = 0; !changed(); ++i) {
      FASTRNN_CPU_RELAX();
      if ((i & 255) == 255 && std::chrono::steady_clock::now() > deadline) {
        std::unique_lock<std::mutex> lock(sleep_mutex_);
        ++sleepers_;
        wake_.wait(lock, changed);
        --sleepers_;
        return;
      }
    }
  }

  std::mutex busy_;
  std::vector<std::thread> workers_;
  TeamBody body_ = nullptr;
  void* context_ = nullptr;
  int size_ = 0;
  alignas(64) std::atomic<uint64_t> generation_{0};
  alignas(64) std::atomic<int> pending_{0};
  std::mutex sleep_mutex_;
  std::condition_variable wake_;
  int sleepers_ = 0;
};

// Never destroyed: detached workers may still be waiting on it at exit. A forked child has none
// of the parent's threads, so it starts a new pool (the old one's mutexes may be held, too).
Pool* g_pool = new Pool();
// The host runtime's entry points, or nullptr for fastrnn's own pool. Published whole through an
// atomic pointer, so a call reads one consistent set even while another thread switches;
// replaced sets are never freed (a call in flight may still be reading one, and a process
// switches a handful of times at most).
std::atomic<const OpenMpEntryPoints*> g_openmp{nullptr};

int default_threads() {
  if (const char* v = std::getenv("OMP_NUM_THREADS")) {
    const int n = std::atoi(v);  // "4" or the first level of "4,2"
    if (n >= 1) return n;
  }
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n >= 1) return n;
  }
  const unsigned n = std::thread::hardware_concurrency();
  return n >= 1 ? static_cast<int>(n) : 1;
}

std::atomic<int> g_threads{0};  // 0: not decided yet

void after_fork_in_child() {
  g_pool = new Pool();
  g_openmp.store(nullptr, std::memory_order_relaxed);
}

// Registered when the library loads, before any pool or runtime can be in use: a child forked
// at any later point starts clean.
const int g_atfork_registered = pthread_atfork(nullptr, nullptr, after_fork_in_child);

// The runtime's entry points are copied into each call, so a call in flight keeps the runtime
// it started on.
struct OpenMpCall {
  TeamBody body;
  void* context;
  OpenMpEntryPoints rt;
};

void openmp_trampoline(void* data) {
  const OpenMpCall& call = *static_cast<const OpenMpCall*>(data);
  call.body(call.context, call.rt.thread_num(), call.rt.num_threads());
}

// A team's work runs in its caller's floating-point mode (denormals.h): every member takes the
// caller's flush-to-zero bits for the body's duration, whichever thread it is and whoever started
// that thread (a thread inherits its creator's mode, which for a pool or OpenMP thread is an
// accident of which call first needed it).
struct InCallersMode {
  TeamBody body;
  void* context;
  unsigned flush_bits;
};

void run_in_callers_mode(void* data, int member, int size) noexcept {
  const InCallersMode& call = *static_cast<const InCallersMode*>(data);
  const FlushModeOf mode(call.flush_bits);
  call.body(call.context, member, size);
}

}  // namespace

void run_team(int size, TeamBody body, void* context) {
  (void)g_atfork_registered;
  if (size <= 1) return body(context, 0, 1);
  InCallersMode in_mode{body, context, flush_bits_of_this_thread()};
  if (const OpenMpEntryPoints* rt = g_openmp.load(std::memory_order_acquire)) {
    OpenMpCall call{run_in_callers_mode, &in_mode, *rt};
    rt->parallel(openmp_trampoline, &call, static_cast<unsigned>(size), 0);
    return;
  }
  if (!g_pool->run(size, run_in_callers_mode, &in_mode)) body(context, 0, 1);
}

int team_threads() {
  int n = g_threads.load(std::memory_order_relaxed);
  if (n == 0) {
    n = default_threads();
    g_threads.store(n, std::memory_order_relaxed);
  }
  return n;
}

void set_team_threads(int n) {
  if (n < 1) throw std::invalid_argument("n: expected a thread count >= 1, got " + std::to_string(n));
  g_threads.store(n, std::memory_order_relaxed);
}

void use_openmp_runtime(const OpenMpEntryPoints& rt) {
  g_openmp.store(rt.parallel != nullptr ? new OpenMpEntryPoints(rt) : nullptr,
                 std::memory_order_release);
}

}  // namespace fastrnn::cpu
