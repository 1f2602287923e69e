#include "align.hpp"

#include <stdexcept>
#include <string>

#include "difflib_ratio.hpp"
#include "indel.hpp"

namespace asap {

Metric parse_metric(std::string_view name) {
  if (name == "difflib") return Metric::kDifflib;
  if (name == "indel") return Metric::kIndel;
  throw std::invalid_argument("metric must be 'difflib' or 'indel', got '" + std::string(name) + "'");
}

double similarity(TextView a, TextView b, Metric metric) {
  return metric == Metric::kDifflib ? difflib_ratio(a, b) : indel_similarity(a, b);
}

namespace {

// The reference compares SequenceMatcher(None, original_section, compressed_section): the
// compressed section is difflib's b, so its index is built once and reused along the scan.
void retarget(DifflibMatcher& m, TextView b) { m.set_b(b); }
void retarget(LcsMatcher& m, TextView b) { m.set_pattern(b); }

template <class Matcher, class Score>
std::optional<std::vector<int64_t>> scan(TextView original, TextView compressed, Score score) {
  const std::vector<Span> originals = split_section_spans(original);
  const std::vector<Span> sections = split_section_spans(compressed);
  std::vector<int64_t> matched;
  matched.reserve(sections.size());
  size_t next = 0;
  Matcher matcher;
  for (const Span& section : sections) {
    retarget(matcher, slice(compressed, section));
    bool found = false;
    while (next < originals.size() && !found) {
      found = score(matcher, slice(original, originals[next]));
      ++next;
    }
    if (!found) return std::nullopt;
    matched.push_back(static_cast<int64_t>(next) - 1);
  }
  return matched;
}

}  // namespace

std::optional<std::vector<int64_t>> align_steps(TextView original, TextView compressed, double threshold,
                                                Metric metric) {
  if (metric == Metric::kDifflib)
    return scan<DifflibMatcher>(original, compressed, [threshold](DifflibMatcher& m, TextView o) {
      return m.reaches(o, threshold);
    });
  return scan<LcsMatcher>(original, compressed,
                          [threshold](LcsMatcher& m, TextView o) { return m.reaches(o, threshold); });
}

}  // namespace asap
