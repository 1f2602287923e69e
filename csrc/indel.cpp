#include "indel.hpp"

#include <algorithm>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace asap {

void LcsMatcher::set_pattern(TextView pattern) {
  pattern_ = pattern;
  alphabet_.assign(pattern);
  pattern_ids_.resize(pattern.size());
  for (size_t p = 0; p < pattern.size(); ++p) pattern_ids_[p] = alphabet_.id(pattern[p]);
  block_mask_.assign(static_cast<size_t>(alphabet_.size()) * kBlocksPerPass, 0);
}

template <size_t Blocks>
int64_t LcsMatcher::pass(size_t lo, size_t hi) {
  for (size_t p = lo; p < hi; ++p)
    block_mask_[static_cast<size_t>(pattern_ids_[p]) * kBlocksPerPass + (p - lo) / 64] |= uint64_t{1} << ((p - lo) % 64);
  // Hyyroe's step per 64-bit word: v' = (v + (v & match)) | (v & ~match), the additions of the
  // words chained by their carries into one wide addition. Several words per text position give
  // the CPU independent work (each word's chain over t is separate) and read each text id and
  // carry once per Blocks words instead of once per word.
  uint64_t v[Blocks];
  for (size_t k = 0; k < Blocks; ++k) v[k] = ~uint64_t{0};  // a zero bit per pattern position ending an LCS step
  static constexpr uint64_t kNoMatch[kBlocksPerPass] = {};
  const size_t n = text_ids_.size();
  for (size_t t = 0; t < n; ++t) {
    const int32_t id = text_ids_[t];
    const uint64_t* match = id == Alphabet::kAbsent ? kNoMatch : &block_mask_[static_cast<size_t>(id) * kBlocksPerPass];
#if defined(__x86_64__)
    // The CPU's add-with-carry chains the words' additions in one instruction each.
    unsigned char carry = carry_[t];
    for (size_t k = 0; k < Blocks; ++k) {
      unsigned long long sum;
      carry = _addcarry_u64(carry, v[k], v[k] & match[k], &sum);
      v[k] = sum | (v[k] & ~match[k]);
    }
    carry_[t] = carry;
#else
    uint64_t carry = carry_[t];
    for (size_t k = 0; k < Blocks; ++k) {
      const uint64_t u = v[k] & match[k];
      const uint64_t sum = v[k] + u;
      const uint64_t with_carry = sum + carry;
      carry = (sum < v[k]) | (with_carry < sum);
      v[k] = with_carry | (v[k] & ~match[k]);
    }
    carry_[t] = static_cast<uint8_t>(carry);
#endif
  }
  int64_t ones = 0;
  for (size_t k = 0; k < Blocks; ++k) {
    const size_t width = std::min<size_t>(64, hi - lo - 64 * k);
    ones += __builtin_popcountll(width == 64 ? v[k] : v[k] & ((uint64_t{1} << width) - 1));
  }
  for (size_t p = lo; p < hi; ++p) block_mask_[static_cast<size_t>(pattern_ids_[p]) * kBlocksPerPass + (p - lo) / 64] = 0;
  return ones;
}

int64_t LcsMatcher::lcs(TextView text, int64_t needed) {
  // A common prefix or suffix is part of some longest common subsequence, so it is counted
  // directly and only the middles go through the quadratic part: a long near-copy with edits in
  // one place costs O(len) instead of O(len^2 / 64).
  size_t m_begin = 0, t_begin = 0, m_end = pattern_.size(), t_end = text.size();
  while (m_begin < m_end && t_begin < t_end && pattern_[m_begin] == text[t_begin]) ++m_begin, ++t_begin;
  while (m_end > m_begin && t_end > t_begin && pattern_[m_end - 1] == text[t_end - 1]) --m_end, --t_end;
  const auto common = static_cast<int64_t>(m_begin + (pattern_.size() - m_end));
  if (m_begin == m_end || t_begin == t_end) return common;
  text_ids_.resize(t_end - t_begin);
  for (size_t t = t_begin; t < t_end; ++t) text_ids_[t - t_begin] = alphabet_.id(text[t]);
  carry_.assign(text_ids_.size(), 0);
  // The pattern is processed a few 64-bit blocks at a time over the whole text, passing each text
  // position's carry on to the next pass. The recurrence for block w at text position t needs
  // only block w at t - 1 and the carry of block w - 1 at t, so this order gives the same bits as
  // the usual text-major loop while holding masks for a few blocks only: memory stays O(len)
  // whatever the alphabet (a text of 90k distinct CJK characters would need gigabytes of
  // full-length masks).
  // After the passes up to `hi`, LCS(pattern[m_begin:hi], text) = (hi - m_begin) - ones, and each
  // later pattern character adds at most one, so common + (m_end - m_begin) - ones bounds the
  // answer: once it falls below `needed`, the rest cannot change the verdict.
  const auto span = static_cast<int64_t>(m_end - m_begin);
  int64_t ones = 0;
  for (size_t lo = m_begin; lo < m_end; lo += 64 * kBlocksPerPass) {
    const size_t hi = std::min(m_end, lo + 64 * kBlocksPerPass);
    switch ((hi - lo + 63) / 64) {
      case 1: ones += pass<1>(lo, hi); break;
      case 2: ones += pass<2>(lo, hi); break;
      case 3: ones += pass<3>(lo, hi); break;
      default: ones += pass<4>(lo, hi); break;
    }
    if (common + span - ones < needed) break;
  }
  return common + span - ones;
}

}  // namespace asap
