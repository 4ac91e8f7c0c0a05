// State resets inside a sequence (ForwardArgs::resets), one rule for both backends.
//
// resets is a (T, B) array of bytes (0 or 1) in time order, as the caller gave it. A reset at
// (t, b) splits sequence b before step t: the segment from t on runs as a sequence of its own,
// starting from zeros.
//   forward walk: the state entering step t is replaced by zeros when resets[t][b];
//   reverse walk (t = T-1 .. 0): the state entering step t comes from step t+1, and is replaced
//     by zeros when step t+1 began a segment, i.e. when resets[t+1][b] (each segment's reverse
//     walk starts from zeros at its last step; the last segment from the given initial state).
// A reset flagged at a padded step (t >= lengths[b]) is ignored; resets[0] matters to the forward
// walk only (it replaces h0), since step 0 begins the first segment anyway. Replacing the state is
// multiplying it by 0: no gradient flows into the replaced state.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FASTRNN_HOST_DEVICE __host__ __device__
#else
#define FASTRNN_HOST_DEVICE
#endif

namespace fastrnn {

// Whether the state entering the step at time t of row b is zeros instead of the carried state.
FASTRNN_HOST_DEVICE inline bool starts_fresh(const uint8_t* resets, const int64_t* lengths,
                                             int64_t T, int64_t B, bool reverse, int64_t b,
                                             int64_t t) {
  if (resets == nullptr) return false;
  const int64_t boundary = reverse ? t + 1 : t;  // the step whose reset splits before it
  if (boundary >= T || (lengths != nullptr && boundary >= lengths[b])) return false;
  return resets[boundary * B + b] != 0;
}

}  // namespace fastrnn
