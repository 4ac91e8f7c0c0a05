// How much memory a call may use: refuse, before anything is allocated, a call that cannot fit.
#pragma once

#include <cstddef>
#include <stdexcept>

namespace fastrnn::bindings {

// Raised as MemoryError.
struct OutOfMemory : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The memory this process can hope to get, in bytes, for a request of `request` bytes: the least
// of physical memory and the cgroup (container) limit, read once from /proc and /sys; for large
// requests also the kernel's current MemAvailable estimate (read per call, but only then).
double usable_memory_bytes(double request);

// Throws OutOfMemory when `elements` of `element_bytes` each (outputs, saved state and scratch)
// exceed what the process can get: Linux overcommits, so such a call would otherwise be killed
// part-way instead of raising.
void check_fits_in_memory(double elements, size_t element_bytes);

}  // namespace fastrnn::bindings
