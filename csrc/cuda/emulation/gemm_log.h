// What the host emulation's cuBLAS saw: for each GEMM while the log is on, the handle, the stream
// the handle was bound to, and the workspace it used (the handle's default workspace, or one given
// with cublasSetWorkspace), as cuBLAS would use them on a GPU. Tests read it through the
// _cuda_emulated module (start_gemm_log / take_gemm_log) to check that GEMMs on two streams never
// share a workspace (gemm.cuh). Plain C++, no CUDA types, so the bindings can include it.
#pragma once

#include <mutex>
#include <vector>

namespace fastrnn::emu {

struct GemmRecord {
  const void* handle;
  const void* stream;
  const void* workspace;
};

class GemmLog {
 public:
  void start() {
    std::lock_guard<std::mutex> lock(mutex_);
    records_.clear();
    on_ = true;
  }
  // The records since start(); the log is off afterwards.
  std::vector<GemmRecord> take() {
    std::lock_guard<std::mutex> lock(mutex_);
    on_ = false;
    std::vector<GemmRecord> out;
    out.swap(records_);
    return out;
  }
  void record(const GemmRecord& r) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (on_) records_.push_back(r);
  }

 private:
  std::mutex mutex_;
  bool on_ = false;
  std::vector<GemmRecord> records_;
};

inline GemmLog& gemm_log() {
  static GemmLog log;  // one per process (an inline function's static is shared by all units)
  return log;
}

}  // namespace fastrnn::emu
