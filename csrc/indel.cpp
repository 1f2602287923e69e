#include "indel.hpp"

#include <algorithm>

namespace asap {

void LcsMatcher::set_pattern(TextView pattern) {
  pattern_ = pattern;
  alphabet_.assign(pattern);
  pattern_ids_.resize(pattern.size());
  for (size_t p = 0; p < pattern.size(); ++p) pattern_ids_[p] = alphabet_.id(pattern[p]);
  block_mask_.assign(static_cast<size_t>(alphabet_.size()), 0);
}

int64_t LcsMatcher::lcs(TextView text, int64_t needed) {
  // A common prefix or suffix is part of some longest common subsequence, so it is counted
  // directly and only the middles go through the quadratic part: a long near-copy with edits at
  // its ends costs O(len) instead of O(len^2 / 64).
  size_t m_begin = 0, t_begin = 0, m_end = pattern_.size(), t_end = text.size();
  while (m_begin < m_end && t_begin < t_end && pattern_[m_begin] == text[t_begin]) ++m_begin, ++t_begin;
  while (m_end > m_begin && t_end > t_begin && pattern_[m_end - 1] == text[t_end - 1]) --m_end, --t_end;
  const auto common = static_cast<int64_t>(m_begin + (pattern_.size() - m_end));
  if (m_begin == m_end || t_begin == t_end) return common;
  text_ids_.resize(t_end - t_begin);
  for (size_t t = t_begin; t < t_end; ++t) text_ids_[t - t_begin] = alphabet_.id(text[t]);
  const size_t n = text_ids_.size();
  carry_.assign(n, 0);
  // The pattern is processed one 64-bit block at a time over the whole text, passing each text
  // position's carry on to the next block. The recurrence for block w at text position t needs
  // only block w at t - 1 and the carry of block w - 1 at t, so this order gives the same bits as
  // the usual text-major loop while holding masks for 64 pattern characters only: memory stays
  // O(len) whatever the alphabet (a text of 90k distinct CJK characters would need gigabytes of
  // full-length masks).
  // After the blocks up to `hi`, LCS(pattern[:hi], text) = (hi - m_begin) - ones, and each later
  // pattern character adds at most one, so common + (m_end - m_begin) - ones bounds the answer.
  int64_t ones = 0;
  const auto span = static_cast<int64_t>(m_end - m_begin);
  for (size_t lo = m_begin; lo < m_end; lo += 64) {
    const size_t hi = std::min(m_end, lo + 64);
    for (size_t p = lo; p < hi; ++p) block_mask_[static_cast<size_t>(pattern_ids_[p])] |= uint64_t{1} << (p - lo);
    uint64_t v = ~uint64_t{0};  // a zero bit per pattern position that ends an LCS step so far
    for (size_t t = 0; t < n; ++t) {
      const int32_t id = text_ids_[t];
      const uint64_t match = id == Alphabet::kAbsent ? 0 : block_mask_[static_cast<size_t>(id)];
      const uint64_t u = v & match;
      const uint64_t sum = v + u;
      const uint64_t with_carry = sum + carry_[t];
      carry_[t] = static_cast<uint8_t>((sum < v) | (with_carry < sum));
      v = with_carry | (v & ~match);
    }
    const size_t width = hi - lo;
    ones += __builtin_popcountll(width == 64 ? v : v & ((uint64_t{1} << width) - 1));
    for (size_t p = lo; p < hi; ++p) block_mask_[static_cast<size_t>(pattern_ids_[p])] = 0;
    if (common + span - ones < needed) return common + span - ones;
  }
  return common + span - ones;
}

}  // namespace asap
