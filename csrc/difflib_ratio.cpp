#include "difflib_ratio.hpp"

#include <algorithm>
#include <cstdint>

namespace asap {

void DifflibMatcher::set_b(TextView b) {
  b_ = b;
  alphabet_.assign(b);
  lcs_ready_ = false;
  const auto n_ids = static_cast<size_t>(alphabet_.size());
  const int64_t n = static_cast<int64_t>(b.size());
  b_count_.assign(n_ids, 0);
  b_ids_.resize(b.size());
  for (size_t j = 0; j < b.size(); ++j) {
    b_ids_[j] = alphabet_.id(b[j]);
    ++b_count_[static_cast<size_t>(b_ids_[j])];
  }
  // difflib's autojunk: with len(b) >= 200, an element seen more than len(b) // 100 + 1 times is
  // "popular" and removed from b2j (it can still extend a match, see find_longest_match).
  const int64_t ntest = n >= 200 ? n / 100 + 1 : n;
  // b2j_start_ first counts the kept positions of each id, then becomes the CSR offsets.
  b2j_start_.assign(n_ids + 1, 0);
  for (size_t k = 0; k < n_ids; ++k)
    b2j_start_[k + 1] = b2j_start_[k] + (b_count_[k] > ntest ? 0 : b_count_[k]);
  b2j_.resize(static_cast<size_t>(b2j_start_.back()));
  avail_.assign(b2j_start_.begin(), b2j_start_.end() - 1);  // next free slot per id
  for (int64_t j = 0; j < n; ++j) {
    const auto k = static_cast<size_t>(b_ids_[static_cast<size_t>(j)]);
    if (b_count_[k] <= ntest) b2j_[static_cast<size_t>(avail_[k]++)] = static_cast<int32_t>(j);
  }
  avail_ = b_count_;  // quick_ratio's starting point, restored after each call
  // Stale stamps stay harmless: stamps only grow until find_longest_match resets them on wrap.
  if (prev_.size() < b.size() + 1) {
    prev_.resize(b.size() + 1, J2Len{0, 0});
    cur_.resize(b.size() + 1, J2Len{0, 0});
  }
}

DifflibMatcher::Match DifflibMatcher::find_longest_match(int64_t alo, int64_t ahi, int64_t blo, int64_t bhi,
                                                         int64_t limit) {
  int64_t besti = alo, bestj = blo, bestsize = 0;
  // One fresh stamp per row (+1 for the row before alo); on wrap-around, forget all stamps.
  if (stamp_ > UINT32_MAX - static_cast<uint64_t>(ahi - alo) - 2) {
    std::fill(prev_.begin(), prev_.end(), J2Len{0, 0});
    std::fill(cur_.begin(), cur_.end(), J2Len{0, 0});
    stamp_ = 0;
  }
  // prev[j + 1] holds j2len[j] when its stamp is the previous row's; a fresh stamp per row makes
  // every older entry read as absent, which is difflib's `j2len = newj2len`.
  J2Len* prev = prev_.data();
  J2Len* cur = cur_.data();
  uint32_t prev_stamp = ++stamp_;
  // A run of `limit` seeding matches is the longest there can be here, and the first one met in
  // difflib's scan order is the one difflib keeps (it only replaces on a strictly longer run), so
  // the scan stops there. With limit 0 there is no seed in the range at all.
  const int64_t rows = limit > 0 ? ahi - alo : 0;
  int64_t i = alo;
  for (; i < alo + rows; ++i) {
    const uint32_t row_stamp = ++stamp_;
    const int32_t id = a_ids_[static_cast<size_t>(i)];
    if (id != Alphabet::kAbsent) {
      const int32_t* first = b2j_.data() + b2j_start_[static_cast<size_t>(id)];
      const int32_t* last = b2j_.data() + b2j_start_[static_cast<size_t>(id) + 1];
      if (blo > 0) first = std::lower_bound(first, last, static_cast<int32_t>(blo));
      const int32_t* p = first;
      for (; p != last; ++p) {
        const int64_t j = *p;
        if (j >= bhi) break;
        const J2Len before = prev[j];
        const int32_t k = (before.stamp == prev_stamp ? before.len : 0) + 1;
        cur[j + 1] = J2Len{row_stamp, k};
        if (k > bestsize) {
          besti = i - k + 1;
          bestj = j - k + 1;
          bestsize = k;
          if (k >= limit) break;
        }
      }
      work_ += p - first;
      if (bestsize >= limit) break;
    }
    std::swap(prev, cur);
    prev_stamp = row_stamp;
  }
  work_ += i - alo;
  const int64_t seeded = bestsize;
  // isjunk is None, so no element is "junk": difflib extends the best match over any equal
  // elements, popular ones included; its junk-only second pass never fires.
  while (besti > alo && bestj > blo && a_[static_cast<size_t>(besti - 1)] == b_[static_cast<size_t>(bestj - 1)]) {
    --besti;
    --bestj;
    ++bestsize;
  }
  while (besti + bestsize < ahi && bestj + bestsize < bhi &&
         a_[static_cast<size_t>(besti + bestsize)] == b_[static_cast<size_t>(bestj + bestsize)])
    ++bestsize;
  return {besti, bestj, bestsize, seeded};
}

void DifflibMatcher::start_matches(TextView a) {
  a_ = a;
  pending_.clear();
  found_ = 0;
  work_ = 0;
  // A verbatim copy of a b without popular elements (len(b) < 200) is one block: only the main
  // diagonal reaches a run of len(b), at the last row, so difflib finds (0, 0, n). LLMs copy
  // short sections verbatim often enough for this to matter.
  if (b_.size() < 200 && a == b_) {
    found_ = static_cast<int64_t>(a.size());
    return;
  }
  a_ids_.resize(a.size());
  for (size_t i = 0; i < a.size(); ++i) a_ids_[i] = alphabet_.id(a[i]);
  if (!a.empty() && !b_.empty())
    pending_.push_back({0, static_cast<int64_t>(a.size()), 0, static_cast<int64_t>(b_.size()), INT64_MAX});
}

int64_t DifflibMatcher::seed_count(char32_t c) const noexcept {
  const int32_t id = alphabet_.id(c);
  return id == Alphabet::kAbsent ? 0 : b2j_start_[static_cast<size_t>(id) + 1] - b2j_start_[static_cast<size_t>(id)];
}

bool DifflibMatcher::run_matches(int64_t stop_at, int64_t budget) {
  while (!pending_.empty() && found_ < stop_at) {
    const Range r = pending_.back();
    if (work_ >= budget) return false;
    pending_.pop_back();
    const Match m = find_longest_match(r.alo, r.ahi, r.blo, r.bhi, r.limit);
    if (m.size == 0) continue;
    found_ += m.size;
    // Both sides are inside this range, so no run of seeding matches there is longer than the
    // one just found.
    if (r.alo < m.i && r.blo < m.j) pending_.push_back({r.alo, m.i, r.blo, m.j, m.seeded});
    if (m.i + m.size < r.ahi && m.j + m.size < r.bhi)
      pending_.push_back({m.i + m.size, r.ahi, m.j + m.size, r.bhi, m.seeded});
  }
  return true;
}

int64_t DifflibMatcher::matches(TextView a, int64_t stop_at) {
  start_matches(a);
  run_matches(stop_at, INT64_MAX);
  return found_;
}

double DifflibMatcher::real_quick_ratio(TextView a) const noexcept {
  const int64_t la = static_cast<int64_t>(a.size()), lb = static_cast<int64_t>(b_.size());
  return match_ratio(std::min(la, lb), la + lb);
}

double DifflibMatcher::quick_ratio(TextView a) {
  int64_t matches = 0;
  if (a.size() >= b_count_.size()) {
    for (char32_t c : a) {
      const int32_t id = alphabet_.id(c);
      if (id != Alphabet::kAbsent && avail_[static_cast<size_t>(id)] > 0) {
        --avail_[static_cast<size_t>(id)];
        ++matches;
      }
    }
    std::copy(b_count_.begin(), b_count_.end(), avail_.begin());
  } else {
    // A short a against a b with a large alphabet restores only the counts it took, so the call
    // stays O(len(a)) like difflib's own.
    touched_.clear();
    for (char32_t c : a) {
      const int32_t id = alphabet_.id(c);
      if (id != Alphabet::kAbsent && avail_[static_cast<size_t>(id)] > 0) {
        if (avail_[static_cast<size_t>(id)]-- == b_count_[static_cast<size_t>(id)]) touched_.push_back(id);
        ++matches;
      }
    }
    for (int32_t id : touched_) avail_[static_cast<size_t>(id)] = b_count_[static_cast<size_t>(id)];
  }
  return match_ratio(matches, static_cast<int64_t>(a.size() + b_.size()));
}

namespace {

// A pair whose quick_ratio (the multiset bound) is this high is most likely a copy, with a few
// edits, that the match accepts after one or two longest-match searches; the LCS bound would
// almost never reject it, so its work is held back until the match has proved expensive.
constexpr double kLikelyCopy = 0.95;

// Relative times of the two kinds of work, measured on the real-trace comparisons that the
// quick bounds leave open (gcc 12 -O3, x86-64): an LCS word step about 2.6 ns, a step of
// find_longest_match (a row, or a b2j position visited) about 6.6 ns. They only decide which runs
// first, never an answer.
constexpr int64_t kLcsWordTime = 2;
constexpr int64_t kMatchStepTime = 5;
// On those comparisons the whole early-stopping match costs about 2.7 times its first search, and
// the LCS bound rejects 80% of them; so the bound goes first whenever it costs less than three
// first searches.
constexpr int64_t kSearchesPerMatch = 3;

}  // namespace

int64_t DifflibMatcher::matches_at_least(TextView a, int64_t needed, int64_t stop_at, bool likely_copy) {
  // The bounds are ordered by cost. The LCS bound costs len(a) * len(b) / 64 word steps; the
  // match it can save costs at least its first search: len(a) rows plus the b2j positions they
  // seed from. On two 1e6-character strings that autojunk leaves almost nothing to seed from, the
  // bound would cost 1.6e10 steps to save a 1e6-step match; there the match runs first, and the
  // bound only once the match has spent what the bound costs. Every later search covers part of
  // the first one's range, so it costs no more than the first: the match overshoots the budget by
  // at most what it has already spent, and the bound at most triples the work of the match
  // alone. The answer is the same in every order.
  const auto la = static_cast<int64_t>(a.size());
  const int64_t lcs_time = kLcsWordTime * la * ((static_cast<int64_t>(b_.size()) + 63) / 64);
  bool lcs_first = false;
  if (!likely_copy) {
    // The seeds are only counted as far as the decision needs (sections of a few hundred
    // characters never need them: len(a) alone settles it).
    const int64_t lcs_first_steps = lcs_time / (kSearchesPerMatch * kMatchStepTime);
    int64_t first_search = la;
    for (size_t i = 0; i < a.size() && first_search < lcs_first_steps; ++i) first_search += seed_count(a[i]);
    lcs_first = first_search >= lcs_first_steps;
  }
  if (!lcs_first) {
    start_matches(a);
    int64_t budget = lcs_time / kMatchStepTime;
    if (likely_copy) {
      // A likely copy's bound would almost never reject: the first search runs unconditionally
      // and the bound waits until the searches after it have cost as much as it.
      if (run_matches(stop_at, 1)) return found_;
      budget += work_;
    }
    if (run_matches(stop_at, budget)) return found_;
  }
  if (!lcs_ready_) {
    lcs_.set_pattern(b_);
    lcs_ready_ = true;
  }
  const int64_t lcs = lcs_.lcs(a, needed);
  if (lcs < needed) return lcs;
  if (lcs_first) return matches(a, stop_at);
  run_matches(stop_at, INT64_MAX);
  return found_;
}

double DifflibMatcher::ratio_at_least(TextView a, double cutoff) {
  if (cutoff <= 0.0) return ratio(a);
  // Every bound is computed with the same formula over a count >= the true match count, so a
  // bound below the cutoff proves the ratio is below it too (float division is monotone).
  const int64_t length = static_cast<int64_t>(a.size() + b_.size());
  const double real_quick = real_quick_ratio(a);
  if (real_quick < cutoff) return real_quick;
  const double quick = quick_ratio(a);
  if (quick < cutoff) return quick;
  const int64_t found = matches_at_least(a, matches_needed(cutoff, length), INT64_MAX, quick >= kLikelyCopy);
  return match_ratio(found, length);
}

bool DifflibMatcher::reaches(TextView a, double threshold) {
  const int64_t length = static_cast<int64_t>(a.size() + b_.size());
  if (match_ratio(0, length) >= threshold) return true;
  if (real_quick_ratio(a) < threshold) return false;
  const double quick = quick_ratio(a);
  if (quick < threshold) return false;
  const int64_t needed = matches_needed(threshold, length);
  return matches_at_least(a, needed, needed, quick >= kLikelyCopy) >= needed;
}

}  // namespace asap
