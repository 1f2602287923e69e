#pragma once

#include <cstdint>

namespace asap {

// Python difflib's _calculate_ratio: 2.0 * matches / length, 1.0 when both strings are empty.
// Every similarity here goes through it so that equal counts give bit-identical floats.
inline double match_ratio(int64_t matches, int64_t length) noexcept {
  return length ? 2.0 * static_cast<double>(matches) / static_cast<double>(length) : 1.0;
}

// The fewest matches whose match_ratio over `length` reaches threshold (by the same float
// formula, so "count >= matches_needed" is exactly "ratio >= threshold"); length > 0.
inline int64_t matches_needed(double threshold, int64_t length) noexcept {
  int64_t needed = static_cast<int64_t>(threshold * static_cast<double>(length) / 2.0) - 1;
  if (needed < 0) needed = 0;
  while (match_ratio(needed, length) < threshold) ++needed;
  return needed;
}

}  // namespace asap
