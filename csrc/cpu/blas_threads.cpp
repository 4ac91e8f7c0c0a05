// Which threads run the BLAS library's parallel work: fastrnn's team (thread_team.h).
//
// OpenBLAS's own pthreads pool would be a second pool beside the team that runs the recurrence:
// after each GEMM its workers keep spinning and yielding for a while, taking the cores the
// recurrence's members are waiting for. OpenBLAS lets the caller run its jobs instead
// (openblas_set_threads_callback_function): they go to run_team, so the process has one pool.
//
// Inside a host framework that has an OpenMP pool of its own (PyTorch's libgomp) the two pools
// would spin against each other in the same way (measured: an LSTM layer's forward+backward
// called from torch took twice its time alone). run_threads_on_openmp moves the team onto the host's
// OpenMP runtime, found by path among the libraries already loaded (dlopen RTLD_NOLOAD), so
// fastrnn neither links against an OpenMP runtime nor loads a second one.
#include <dlfcn.h>
#include <pthread.h>

#include <cblas.h>

#include <cstddef>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "cpu/denormals.h"
#include "cpu/thread_team.h"
#include "fastrnn/fastrnn.h"

namespace fastrnn {

namespace {

std::string g_openmp_path;          // "" while the team runs on fastrnn's own threads
std::mutex g_switch_mutex;
std::mutex* g_jobs_mutex = new std::mutex();  // never destroyed (see run_jobs_in_team)

struct BlasJobs {
  openblas_dojob_callback dojob;
  int count;
  std::size_t stride;
  char* data;
  int dojob_data;
  void run(int i) const { dojob(i, data + i * stride, dojob_data); }
};

// OpenBLAS's threaded kernels wait on one another's progress, so every job must run concurrently
// with the others: jobs beyond the team's size (a team cut short: the pool is busy, or the host
// runtime is inside a parallel region) get threads of their own rather than running after
// another job.
void run_jobs_in_team(int /*sync: always 1*/, openblas_dojob_callback dojob, int numjobs,
                      std::size_t jobdata_elsize, void* jobdata, int dojob_data) {
  const BlasJobs jobs{dojob, numjobs, jobdata_elsize, static_cast<char*>(jobdata), dojob_data};
  if (numjobs <= 1) {
    if (numjobs == 1) jobs.run(0);
    return;
  }
  // One call's jobs at a time. With a threads callback installed, OpenBLAS (0.3.34) hands job i
  // of every call the same per-position scratch, so two Python threads' parallel GEMM/GEMV calls
  // at once overwrote each other's (wrong results, tests/test_stress.py; also reproduced in plain
  // C against the library). OpenBLAS's own thread server serialises its calls in the same way.
  std::lock_guard<std::mutex> one_call_at_a_time(*g_jobs_mutex);
  // Every job runs in the BLAS caller's denormal mode (cpu/denormals.h): the team's members
  // through run_team, the extra threads here.
  const unsigned flush_bits = cpu::flush_bits_of_this_thread();
  cpu::run_team(numjobs, [&jobs, flush_bits](int member, int team) {
    std::vector<std::thread> extra;
    if (member == 0)
      for (int i = team; i < jobs.count; ++i)
        extra.emplace_back([&jobs, i, flush_bits] {
          const cpu::FlushModeOf mode(flush_bits);
          jobs.run(i);
        });
    if (member < jobs.count) jobs.run(member);
    for (auto& t : extra) t.join();
  });
}

// Installed once, before the first GEMM (the extension module's initialisation). A forked child
// gets a fresh mutex: another thread of the parent may have held it at the fork.
const bool g_callback_installed = [] {
  scipy_openblas_set_threads_callback_function(run_jobs_in_team);
  pthread_atfork(nullptr, nullptr, [] { g_jobs_mutex = new std::mutex(); });
  return true;
}();

// A forked child has none of the parent's OpenMP threads, and libgomp does not recreate them (a
// child's first parallel region can hang): the child goes back to fastrnn's own threads
// (thread_team.cpp starts a new pool there). No lock: the child has one thread, and the mutex
// may have been held by another thread of the parent at the fork.
void back_to_own_threads_in_child() {
  cpu::use_openmp_runtime(cpu::OpenMpEntryPoints{});  // thread_team.cpp does so too
  g_openmp_path.clear();
}

template <typename F>
F symbol(void* handle, const char* name, const std::string& path) {
  void* p = dlsym(handle, name);
  if (p == nullptr)
    throw std::invalid_argument("library_path: " + path + " has no symbol " + name +
                                " (not an OpenMP runtime)");
  return reinterpret_cast<F>(p);
}

}  // namespace

void run_threads_on_openmp(const std::string& library_path) {
  std::lock_guard<std::mutex> lock(g_switch_mutex);
  if (library_path.empty()) {
    cpu::use_openmp_runtime(cpu::OpenMpEntryPoints{});
    g_openmp_path.clear();
    return;
  }
  if (!g_openmp_path.empty()) {
    if (g_openmp_path == library_path) return;
    throw std::invalid_argument("library_path: fastrnn's threads already run on " +
                                g_openmp_path + "; switch back to its own threads (\"\") first");
  }
  // RTLD_NOLOAD: only a runtime the process has already loaded (the host's own pool).
  void* handle = dlopen(library_path.c_str(), RTLD_NOW | RTLD_NOLOAD);
  if (handle == nullptr)
    throw std::invalid_argument("library_path: " + library_path +
                                " is not a library loaded in this process");
  cpu::OpenMpEntryPoints rt;
  rt.parallel = symbol<decltype(rt.parallel)>(handle, "GOMP_parallel", library_path);
  rt.thread_num = symbol<decltype(rt.thread_num)>(handle, "omp_get_thread_num", library_path);
  rt.num_threads = symbol<decltype(rt.num_threads)>(handle, "omp_get_num_threads", library_path);
  // The handle stays open: the runtime must outlive every call.
  static const int atfork_registered = pthread_atfork(nullptr, nullptr, back_to_own_threads_in_child);
  (void)atfork_registered;
  cpu::use_openmp_runtime(rt);
  g_openmp_path = library_path;
}

std::string thread_pool() {
  (void)g_callback_installed;
  std::lock_guard<std::mutex> lock(g_switch_mutex);
  return g_openmp_path.empty() ? "fastrnn" : "OpenMP runtime " + g_openmp_path;
}

}  // namespace fastrnn
