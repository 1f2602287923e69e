// Normalized indel similarity 2 * LCS(a, b) / (len(a) + len(b)), with a bit-parallel LCS
// (Hyyroe 2004: one add, one and, one or per 64 pattern code points and text element).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "alphabet.hpp"
#include "ratio.hpp"
#include "text.hpp"

namespace asap {

// Holds one pattern string so it can be compared with many texts.
class LcsMatcher {
 public:
  LcsMatcher() = default;
  explicit LcsMatcher(TextView pattern) { set_pattern(pattern); }
  void set_pattern(TextView pattern);  // reuses the buffers

  // The LCS length of the pattern and text. With `needed`, may instead return any count below
  // `needed` as soon as the LCS is proven to fall short of it (an upper bound, never the answer).
  int64_t lcs(TextView text, int64_t needed = 0);
  double similarity(TextView text) {
    return match_ratio(lcs(text), static_cast<int64_t>(text.size() + pattern_.size()));
  }
  // similarity(text) >= threshold, with the length bound first and an LCS that stops as soon as
  // it cannot reach the threshold.
  bool reaches(TextView text, double threshold) {
    const auto length = static_cast<int64_t>(text.size() + pattern_.size());
    if (match_ratio(0, length) >= threshold) return true;
    if (match_ratio(static_cast<int64_t>(std::min(text.size(), pattern_.size())), length) < threshold) return false;
    const int64_t needed = matches_needed(threshold, length);
    return lcs(text, needed) >= needed;
  }

 private:
  TextView pattern_;
  Alphabet alphabet_;
  std::vector<int32_t> pattern_ids_;
  std::vector<int32_t> text_ids_;      // scratch: the text in the pattern's alphabet
  // Pattern blocks of 64 code points advanced together in one pass over the text.
  static constexpr size_t kBlocksPerPass = 4;
  template <size_t Blocks>
  int64_t pass(size_t lo, size_t hi);  // zero bits of pattern[lo:hi] after one pass

  std::vector<uint64_t> block_mask_;   // per id, kBlocksPerPass words: bits of the current pass's blocks
  std::vector<uint8_t> carry_;         // per text position: the carry into the next pass
};

inline double indel_similarity(TextView a, TextView b) { return LcsMatcher(b).similarity(a); }

}  // namespace asap
