// The workspace of one call: uninitialised scratch kept per thread from one call to the next.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace fastrnn::bindings {

// Uninitialised scratch (the kernels write every element before reading it), 64-byte aligned
// (cpu/layer_impl.h aligns the regions inside it), kept per thread and dtype from one call to
// the next: a fresh multi-megabyte allocation is mapped anew by the OS on every call, and its
// page faults cost ~5% of an LSTM forward at T=150, B=64, H=256. Scratch above
// kMaxCachedScratch is freed after its call.
class Scratch {
 public:
  static constexpr size_t kMaxCachedScratch = size_t(1) << 30;

  // `elements` of scalar_t (float or double: scratch.cpp instantiates both).
  template <typename scalar_t>
  static Scratch of(int64_t elements);

  template <typename scalar_t>
  scalar_t* get() const { return reinterpret_cast<scalar_t*>(data_); }

 private:
  struct Free {
    void operator()(void* p) const;
  };
  using Buffer = std::unique_ptr<unsigned char, Free>;
  static Buffer allocate(size_t bytes);

  Buffer owned_;
  unsigned char* data_ = nullptr;
};

}  // namespace fastrnn::bindings
