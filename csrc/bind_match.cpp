#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>

#include "align.hpp"
#include "bindings.hpp"
#include "difflib_ratio.hpp"
#include "indel.hpp"
#include "parallel.hpp"

namespace asap::bind {

namespace {

Metric metric_arg(const std::string& name) {
  try {
    return parse_metric(name);
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }
}

// RapidFuzz's score_cutoff convention: the score when it reaches the cutoff, else 0.0.
double cutoff_similarity(TextView a, TextView b, Metric metric, double cutoff) {
  double score;
  if (metric == Metric::kDifflib) {
    thread_local DifflibMatcher matcher;  // keeps its buffers between calls on this thread
    matcher.set_b(b);
    score = matcher.ratio_at_least(a, cutoff);
  } else {
    const auto length = static_cast<int64_t>(a.size() + b.size());
    score = match_ratio(static_cast<int64_t>(std::min(a.size(), b.size())), length);
    if (score >= cutoff) {
      thread_local LcsMatcher matcher;
      matcher.set_pattern(b);
      // With a cutoff the LCS stops as soon as it cannot reach the fewest matches the cutoff needs.
      score = match_ratio(matcher.lcs(a, length ? matches_needed(cutoff, length) : 0), length);
    }
  }
  return score >= cutoff ? score : 0.0;
}

}  // namespace

void bind_match(py::module_& m) {
  m.def(
      "similarity",
      [](py::handle a, py::handle b, const std::string& metric, double score_cutoff) {
        const Metric mt = metric_arg(metric);
        check_unit_interval(score_cutoff, "similarity", "score_cutoff");
        const Text ta = to_text(a, "similarity", "a", kMaxMatchLength);
        const Text tb = to_text(b, "similarity", "b", kMaxMatchLength);
        py::gil_scoped_release release;
        return cutoff_similarity(ta, tb, mt, score_cutoff);
      },
      py::arg("a"), py::arg("b"), py::arg("metric") = "difflib", py::arg("score_cutoff") = 0.0);

  m.def(
      "similarity_batch",
      [](py::handle a, py::handle b, const std::string& metric, double score_cutoff, int workers) {
        const Metric mt = metric_arg(metric);
        check_unit_interval(score_cutoff, "similarity_batch", "score_cutoff");
        const std::vector<Text> ta = to_texts(a, "similarity_batch", "a", false, kMaxMatchLength).texts;
        const std::vector<Text> tb = to_texts(b, "similarity_batch", "b", false, kMaxMatchLength).texts;
        if (ta.size() != tb.size())
          throw py::value_error("similarity_batch(): a and b must have the same length, got " +
                                std::to_string(ta.size()) + " and " + std::to_string(tb.size()));
        py::array_t<double> out(static_cast<py::ssize_t>(ta.size()));
        double* scores = out.mutable_data();
        {
          py::gil_scoped_release release;
          parallel_for(static_cast<int64_t>(ta.size()), workers, [&](int64_t i) {
            const auto k = static_cast<size_t>(i);
            scores[k] = cutoff_similarity(ta[k], tb[k], mt, score_cutoff);
          });
        }
        return out;
      },
      py::arg("a"), py::arg("b"), py::arg("metric") = "difflib", py::arg("score_cutoff") = 0.0, py::arg("workers") = 1,
      (std::string("similarity(a[i], b[i]) for every i, as a float64 array.") + kBatchReadingRule).c_str());

  m.def(
      "quick_ratio",
      [](py::handle a, py::handle b) {
        const Text ta = to_text(a, "quick_ratio", "a", kMaxMatchLength);
        const Text tb = to_text(b, "quick_ratio", "b", kMaxMatchLength);
        py::gil_scoped_release release;
        return DifflibMatcher(tb).quick_ratio(ta);
      },
      py::arg("a"), py::arg("b"), "difflib.SequenceMatcher(None, a, b).quick_ratio()");

  m.def(
      "real_quick_ratio",
      [](py::handle a, py::handle b) {
        const Text ta = to_text(a, "real_quick_ratio", "a", kMaxMatchLength);
        const Text tb = to_text(b, "real_quick_ratio", "b", kMaxMatchLength);
        py::gil_scoped_release release;
        return DifflibMatcher(tb).real_quick_ratio(ta);
      },
      py::arg("a"), py::arg("b"), "difflib.SequenceMatcher(None, a, b).real_quick_ratio()");

  m.def(
      "align_steps",
      [](py::handle original, py::handle compressed, double threshold, const std::string& metric) {
        const Metric mt = metric_arg(metric);
        check_unit_interval(threshold, "align_steps", "threshold");
        const Text o = to_text(original, "align_steps", "original", kMaxMatchLength);
        const Text c = to_text(compressed, "align_steps", "compressed", kMaxMatchLength);
        py::gil_scoped_release release;
        return align_steps(o, c, threshold, mt);
      },
      py::arg("original"), py::arg("compressed"), py::arg("threshold") = 0.6, py::arg("metric") = "difflib");

  m.def(
      "align_steps_batch",
      [](py::handle originals, py::handle compressed, double threshold, const std::string& metric, int workers) {
        const Metric mt = metric_arg(metric);
        check_unit_interval(threshold, "align_steps_batch", "threshold");
        const std::vector<Text> o = to_texts(originals, "align_steps_batch", "originals", false, kMaxMatchLength).texts;
        const std::vector<Text> c = to_texts(compressed, "align_steps_batch", "compressed", false, kMaxMatchLength).texts;
        if (o.size() != c.size())
          throw py::value_error("align_steps_batch(): originals and compressed must have the same length, got " +
                                std::to_string(o.size()) + " and " + std::to_string(c.size()));
        std::vector<std::optional<std::vector<int64_t>>> out(o.size());
        {
          py::gil_scoped_release release;
          parallel_for(static_cast<int64_t>(o.size()), workers, [&](int64_t i) {
            const auto k = static_cast<size_t>(i);
            out[k] = align_steps(o[k], c[k], threshold, mt);
          });
        }
        return out;
      },
      py::arg("originals"), py::arg("compressed"), py::arg("threshold") = 0.6, py::arg("metric") = "difflib",
      py::arg("workers") = 1,
      (std::string("align_steps(originals[i], compressed[i]) for every i.") + kBatchReadingRule).c_str());
}

}  // namespace asap::bind
