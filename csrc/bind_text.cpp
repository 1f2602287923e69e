#include <pybind11/stl.h>

#include "bindings.hpp"
#include "parallel.hpp"

namespace asap::bind {

void bind_text(py::module_& m) {
  m.def(
      "split_step_spans",
      [](py::handle text) {
        const Text t = to_text(text, "split_step_spans", "text");
        py::gil_scoped_release release;
        return split_step_spans(t);
      },
      py::arg("text"),
      "(start, end) code-point offsets of each step of split_steps(text), so text[start:end] is the step.");

  m.def(
      "split_steps",
      [](py::handle text) {
        const Text t = to_text(text, "split_steps", "text");
        std::vector<Span> spans;
        {
          py::gil_scoped_release release;
          spans = split_step_spans(t);
        }
        return substrings(text, spans);
      },
      py::arg("text"),
      "[p.strip() for p in text.strip().split('\\n\\n') if p.strip()]");

  m.def(
      "split_section_spans",
      [](py::handle text) {
        const Text t = to_text(text, "split_section_spans", "text");
        py::gil_scoped_release release;
        return split_section_spans(t);
      },
      py::arg("text"),
      "Spans of [s.strip() for s in re.split(r'\\n\\n', text.strip())], empty sections kept.");

  m.def(
      "split_steps_batch",
      [](py::handle texts, int workers) {
        // The items are kept (owned) so that the steps are sliced from the very str objects that
        // were split: indexing `texts` again could return anything by now.
        const TextBatch batch = to_texts(texts, "split_steps_batch", "texts", /*keep_items=*/true);
        std::vector<std::vector<Span>> spans(batch.texts.size());
        {
          py::gil_scoped_release release;
          parallel_for(static_cast<int64_t>(batch.texts.size()), workers, [&](int64_t i) {
            spans[static_cast<size_t>(i)] = split_step_spans(batch.texts[static_cast<size_t>(i)]);
          });
        }
        py::list out(batch.items.size());
        for (size_t i = 0; i < batch.items.size(); ++i)
          PyList_SET_ITEM(out.ptr(), static_cast<Py_ssize_t>(i), substrings(batch.items[i], spans[i]).release().ptr());
        return out;
      },
      py::arg("texts"), py::arg("workers") = 1,
      (std::string("split_steps for each text.") + kBatchReadingRule).c_str());
}

}  // namespace asap::bind
