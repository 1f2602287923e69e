// An exact replica of difflib.SequenceMatcher(None, a, b).ratio() for code-point strings.
//
// Exact means the same float for every input: the same longest-match tie-breaking (earliest in a,
// then earliest in b), the same "popular element" autojunk rule when len(b) >= 200 (elements of b
// occurring more than len(b) // 100 + 1 times are not used to seed matches, but still extend
// them), and the same recursion into the unmatched sides. Only the data structures differ: dense
// arrays replace the dicts, and a stamped double buffer replaces j2len.
#pragma once

#include <climits>
#include <cstdint>
#include <vector>

#include "alphabet.hpp"
#include "indel.hpp"
#include "ratio.hpp"
#include "text.hpp"

namespace asap {

// Holds everything difflib derives from b (set_seq2), so one b can be matched against many a.
class DifflibMatcher {
 public:
  DifflibMatcher() = default;
  explicit DifflibMatcher(TextView b) { set_b(b); }

  // Re-targets the matcher at a new b, reusing its buffers (difflib's set_seq2).
  void set_b(TextView b);

  // sum(size for each matching block), exactly as get_matching_blocks() finds them. With
  // stop_at, returns as soon as the blocks found so far reach it (a lower bound on the total).
  int64_t matches(TextView a, int64_t stop_at = INT64_MAX);
  double ratio(TextView a) { return match_ratio(matches(a), static_cast<int64_t>(a.size() + b_.size())); }

  // Exact upper bounds on ratio(a): difflib's own two, O(1) and O(len(a)). The third, the LCS
  // (the matching blocks are a common subsequence, so their total never exceeds the LCS length),
  // costs len(a) * len(b) / 64 word steps, which on long strings can be far more than the match
  // it is meant to save; matches_at_least decides when it runs.
  double real_quick_ratio(TextView a) const noexcept;
  double quick_ratio(TextView a);

  // ratio(a) when it is >= cutoff, otherwise some value < cutoff, skipping the full match when an
  // exact upper bound already falls short. ratio_at_least(a, 0.0) == ratio(a).
  double ratio_at_least(TextView a, double cutoff);

  // ratio(a) >= threshold, decided with the upper bounds and, when the bounds pass, by finding
  // matching blocks only until they are enough: any subset of the blocks is a lower bound.
  bool reaches(TextView a, double threshold);

 private:
  struct Match {
    int64_t i, j, size;
    int64_t seeded;  // the run of seeding (non-popular) matches it grew from, before extension
  };
  struct Range {
    int64_t alo, ahi, blo, bhi;
    int64_t limit;  // no run of seeding matches in the range is longer (its parent's `seeded`)
  };
  struct J2Len {
    uint32_t stamp;
    int32_t len;
  };

  // matches(a) split in two so that it can pause: start_matches sets up the search over all of a
  // and b; run_matches finds blocks until their total reaches stop_at or no range is left
  // (returns true), or returns false, with ranges still pending, once work_ has reached budget
  // before the next search (call again to resume). The blocks found are the same whatever the
  // pauses.
  void start_matches(TextView a);
  bool run_matches(int64_t stop_at, int64_t budget);
  // b2j positions that c seeds from (0 for an element that is popular or not in b).
  int64_t seed_count(char32_t c) const noexcept;
  // The matching-block total (stopping at stop_at) when it reaches `needed`, otherwise some count
  // below `needed`: the LCS bound decides when it costs less than the match it may save.
  int64_t matches_at_least(TextView a, int64_t needed, int64_t stop_at, bool likely_copy);
  Match find_longest_match(int64_t alo, int64_t ahi, int64_t blo, int64_t bhi, int64_t limit);

  TextView a_;                        // the a of the current matches() run
  TextView b_;
  Alphabet alphabet_;
  std::vector<int32_t> b_ids_;        // scratch: ids of b
  std::vector<int32_t> b_count_;      // full multiset of b by id (quick_ratio counts popular ones too)
  std::vector<int32_t> b2j_start_;    // CSR offsets: positions of id k are b2j_[start[k]:start[k+1]]
  std::vector<int32_t> b2j_;          // ascending positions in b; empty for popular ids
  std::vector<int32_t> a_ids_;        // scratch: ids of the current a in b's alphabet
  std::vector<int32_t> avail_;        // quick_ratio's counts left per id; equal to b_count_ between calls
  std::vector<int32_t> touched_;      // scratch: ids quick_ratio took from, to restore avail_
  std::vector<J2Len> prev_, cur_;     // j2len / newj2len, indexed by j + 1
  uint32_t stamp_ = 0;                // last stamp handed out (see find_longest_match)
  std::vector<Range> pending_;        // ranges of the current run still to search (a stack)
  int64_t found_ = 0;                 // matching-block total of the current run so far
  int64_t work_ = 0;                  // steps of the current run so far: rows searched + b2j positions visited
  LcsMatcher lcs_;
  bool lcs_ready_ = false;            // the LCS masks are built on first use: most b never need them
};

inline double difflib_ratio(TextView a, TextView b) { return DifflibMatcher(b).ratio(a); }

}  // namespace asap
