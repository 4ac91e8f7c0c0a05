// The thread-local scratch allocator (scratch.h).
#include "bindings/scratch.h"

#include <algorithm>
#include <cstdlib>
#include <new>

namespace fastrnn::bindings {

void Scratch::Free::operator()(void* p) const { std::free(p); }

Scratch::Buffer Scratch::allocate(size_t bytes) {
  void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
  if (p == nullptr) throw std::bad_alloc();
  return Buffer(static_cast<unsigned char*>(p));
}

// One cached buffer per thread and scalar type (each instantiation has its own thread_local).
template <typename scalar_t>
Scratch Scratch::of(int64_t elements) {
  const size_t bytes = std::max<size_t>(64, static_cast<size_t>(elements) * sizeof(scalar_t));
  thread_local Buffer cached;
  thread_local size_t cached_bytes = 0;
  Scratch out;
  if (bytes > kMaxCachedScratch) {
    out.owned_ = allocate(bytes);
    out.data_ = out.owned_.get();
  } else {
    if (bytes > cached_bytes) {
      cached.reset();  // free before allocating the larger one
      cached = allocate(bytes);
      cached_bytes = bytes;
    }
    out.data_ = cached.get();
  }
  return out;
}

template Scratch Scratch::of<float>(int64_t);
template Scratch Scratch::of<double>(int64_t);

}  // namespace fastrnn::bindings
