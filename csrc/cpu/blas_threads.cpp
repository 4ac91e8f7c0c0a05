// Which threads run the BLAS library's parallel work.
//
// By default OpenBLAS uses its own pthreads pool. Inside a host framework that has an OpenMP pool
// of its own (PyTorch's libgomp), two pools then share the cores: after each of the host's
// parallel operations its workers spin for a while, and after each GEMM OpenBLAS's workers do,
// each pool taking cores the other is trying to use (measured: an LSTM layer's forward+backward
// called from torch took twice its time alone). OpenBLAS lets the caller run its jobs instead
// (openblas_set_threads_callback_function); run_blas_on_openmp hands them to the host's OpenMP
// runtime, so the process has one pool and the host's spinning workers are the ones that take the
// next GEMM's jobs.
//
// The runtime is found by path among the libraries already loaded (dlopen RTLD_NOLOAD), so
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

#include "fastrnn/fastrnn.h"

namespace fastrnn {

namespace {

// The three entry points of the OpenMP runtime ABI that are needed (libgomp's names; LLVM's and
// Intel's runtimes export them too).
struct OpenMpRuntime {
  void (*parallel)(void (*fn)(void*), void* data, unsigned num_threads, unsigned flags) = nullptr;
  int (*thread_num)() = nullptr;
  int (*num_threads)() = nullptr;
};

OpenMpRuntime g_openmp;             // set before the callback is installed, never after
std::string g_openmp_path;          // "" while OpenBLAS runs its own threads
std::mutex g_switch_mutex;

struct BlasJobs {
  openblas_dojob_callback dojob;
  int count;
  std::size_t stride;
  char* data;
  int dojob_data;
  void run(int i) const { dojob(i, data + i * stride, dojob_data); }
};

// OpenBLAS's threaded kernels wait on one another's progress, so every job must run concurrently
// with the others: jobs beyond the team's size (a team cut short, e.g. when called inside another
// parallel region) get threads of their own rather than running after another job.
void run_as_team_member(void* arg) {
  const BlasJobs& jobs = *static_cast<const BlasJobs*>(arg);
  const int member = g_openmp.thread_num();
  const int team = g_openmp.num_threads();
  std::vector<std::thread> extra;
  if (member == 0)
    for (int i = team; i < jobs.count; ++i) extra.emplace_back([&jobs, i] { jobs.run(i); });
  if (member < jobs.count) jobs.run(member);
  for (auto& t : extra) t.join();
}

void run_jobs_on_openmp(int /*sync: always 1*/, openblas_dojob_callback dojob, int numjobs,
                        std::size_t jobdata_elsize, void* jobdata, int dojob_data) {
  BlasJobs jobs{dojob, numjobs, jobdata_elsize, static_cast<char*>(jobdata), dojob_data};
  if (numjobs <= 1) {
    if (numjobs == 1) jobs.run(0);
    return;
  }
  g_openmp.parallel(run_as_team_member, &jobs, static_cast<unsigned>(numjobs), 0);
}

// A forked child has none of the parent's OpenMP threads, and libgomp does not recreate them (a
// child's first parallel region can hang): the child goes back to OpenBLAS's own threads, which
// OpenBLAS itself re-creates after fork. No lock here: the child has one thread, and the mutex may
// have been held by another thread of the parent at the fork.
void back_to_openblas_threads_in_child() {
  scipy_openblas_set_threads_callback_function(nullptr);
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

void run_blas_on_openmp(const std::string& library_path) {
  std::lock_guard<std::mutex> lock(g_switch_mutex);
  if (library_path.empty()) {
    scipy_openblas_set_threads_callback_function(nullptr);
    g_openmp_path.clear();
    return;
  }
  if (!g_openmp_path.empty()) {
    if (g_openmp_path == library_path) return;
    throw std::invalid_argument("library_path: BLAS jobs already run on " + g_openmp_path +
                                "; switch back to OpenBLAS's threads (\"\") first");
  }
  // RTLD_NOLOAD: only a runtime the process has already loaded (the host's own pool).
  void* handle = dlopen(library_path.c_str(), RTLD_NOW | RTLD_NOLOAD);
  if (handle == nullptr)
    throw std::invalid_argument("library_path: " + library_path +
                                " is not a library loaded in this process");
  OpenMpRuntime rt;
  rt.parallel = symbol<decltype(rt.parallel)>(handle, "GOMP_parallel", library_path);
  rt.thread_num = symbol<decltype(rt.thread_num)>(handle, "omp_get_thread_num", library_path);
  rt.num_threads = symbol<decltype(rt.num_threads)>(handle, "omp_get_num_threads", library_path);
  // The handle stays open: the runtime must outlive every BLAS call.
  static const int atfork_registered =
      pthread_atfork(nullptr, nullptr, back_to_openblas_threads_in_child);
  (void)atfork_registered;
  g_openmp = rt;
  g_openmp_path = library_path;
  scipy_openblas_set_threads_callback_function(run_jobs_on_openmp);
}

std::string blas_thread_pool() {
  std::lock_guard<std::mutex> lock(g_switch_mutex);
  return g_openmp_path.empty() ? "OpenBLAS" : "OpenMP runtime " + g_openmp_path;
}

}  // namespace fastrnn
