// Memory probing for the size checks (memory.h): /proc/meminfo, the cgroup limits, sysconf.
#include "bindings/memory.h"

#include <unistd.h>

#include <fstream>
#include <limits>
#include <sstream>
#include <string>

namespace fastrnn::bindings {

namespace {

// A number from a file: the first word, or the word after `key`; -1 if absent or not a number.
double read_number(const char* path, const char* key) {
  std::ifstream in(path);
  std::string word;
  while (in >> word) {
    if (key == nullptr || word == key) {
      double v = 0;
      if (key != nullptr && !(in >> word)) return -1;
      try { v = std::stod(word); } catch (...) { return -1; }  // "max": no limit
      return key != nullptr ? v * 1024 : v;                     // MemAvailable is in kB
    }
  }
  return -1;
}

}  // namespace

// Physical memory and the cgroup limit are read once; MemAvailable costs ~20 us, so it is read
// only for requests above an eighth of the limit.
double usable_memory_bytes(double request) {
  static const double limit = [] {
    double best = std::numeric_limits<double>::infinity();
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages > 0 && page > 0) best = static_cast<double>(pages) * static_cast<double>(page);
    for (double v : {read_number("/sys/fs/cgroup/memory.max", nullptr),
                     read_number("/sys/fs/cgroup/memory/memory.limit_in_bytes", nullptr)})
      if (v > 0 && v < best) best = v;
    return best;
  }();
  if (request < limit / 8) return limit;
  const double available = read_number("/proc/meminfo", "MemAvailable:");
  return available > 0 && available < limit ? available : limit;
}

void check_fits_in_memory(double elements, size_t element_bytes) {
  const double bytes = elements * static_cast<double>(element_bytes);
  const double usable = usable_memory_bytes(bytes);
  if (bytes > usable) {
    std::ostringstream msg;
    msg << "fastrnn: this call needs " << bytes / (1 << 30) << " GiB (outputs, saved state and "
        << "workspace), more than the " << usable / (1 << 30) << " GiB of memory available";
    throw OutOfMemory(msg.str());
  }
}

}  // namespace fastrnn::bindings
