// Shared helpers for the pybind11 bindings: Python str <-> code points, argument checks.
//
// The rule every binding follows: all Python input is converted to owned C++ data once, with the
// GIL held, and validated there; after the GIL is released no Python object is touched again.
// Another Python thread may mutate a list, and a custom sequence may return a different item each
// time it is indexed, so nothing read before the GIL-free phase is read a second time after it
// (the batch helpers keep owned references to the str items they copied instead).
#pragma once

#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "text.hpp"

namespace asap::bind {

namespace py = pybind11;

void bind_text(py::module_& m);
void bind_match(py::module_& m);

// No length limit for segmentation (its offsets are int64).
inline constexpr Py_ssize_t kAnyLength = PY_SSIZE_T_MAX;
// The matchers store positions and run lengths in int32 (half the memory traffic of int64 on the
// hot loops), so the strings they compare are limited to 2**31 - 1 code points.
inline constexpr Py_ssize_t kMaxMatchLength = INT32_MAX;

// Copies a Python str into code points. Reads the str's own storage (latin-1, UCS-2 or UCS-4), so
// lone surrogates, which cannot be encoded as UTF-8, arrive as the code points they are. Raises
// TypeError naming the function and argument for anything that is not a str (str subclasses are
// str), ValueError past max_length. Needs the GIL.
inline Text to_text(py::handle obj, const char* func, const std::string& arg, Py_ssize_t max_length = kAnyLength) {
  PyObject* o = obj.ptr();
  if (!PyUnicode_Check(o))
    throw py::type_error(std::string(func) + "(): argument '" + arg + "' must be str, not " + Py_TYPE(o)->tp_name);
#if PY_VERSION_HEX < 0x030C0000
  // A str made through the deprecated wchar_t API is not in canonical form until readied.
  if (PyUnicode_READY(o) != 0) throw py::error_already_set();
#endif
  const Py_ssize_t n = PyUnicode_GET_LENGTH(o);
  if (n > max_length)
    throw py::value_error(std::string(func) + "(): argument '" + arg + "' has " + std::to_string(n) +
                          " code points; at most " + std::to_string(max_length) + " are supported");
  const void* data = PyUnicode_DATA(o);
  Text text(static_cast<size_t>(n), U'\0');
  switch (PyUnicode_KIND(o)) {
    case PyUnicode_1BYTE_KIND:
      for (Py_ssize_t i = 0; i < n; ++i) text[static_cast<size_t>(i)] = static_cast<const Py_UCS1*>(data)[i];
      break;
    case PyUnicode_2BYTE_KIND:
      for (Py_ssize_t i = 0; i < n; ++i) text[static_cast<size_t>(i)] = static_cast<const Py_UCS2*>(data)[i];
      break;
    default:
      for (Py_ssize_t i = 0; i < n; ++i) text[static_cast<size_t>(i)] = static_cast<const Py_UCS4*>(data)[i];
      break;
  }
  return text;
}

// A batch argument copied out of Python: the code points of each item and, when the binding
// returns slices of the items, owned references to the str objects themselves (str is immutable,
// so a kept item always matches its copy, whatever happens to the sequence afterwards).
struct TextBatch {
  std::vector<Text> texts;
  std::vector<py::object> items;  // empty unless keep_items; destroyed with the GIL held
};

// Reads a sequence of str exactly once: len() once, then items 0 .. len-1, each indexed once,
// type-checked and copied. A sequence whose len() grows on every call is read at the length it
// had first; one that shrinks while it is read (another thread, or __getitem__ running Python
// code) raises RuntimeError. Ctrl-C interrupts a long read. Needs the GIL.
inline TextBatch to_texts(py::handle seq, const char* func, const char* arg, bool keep_items = false,
                          Py_ssize_t max_length = kAnyLength) {
  PyObject* s = seq.ptr();
  if (PyUnicode_Check(s) || PyBytes_Check(s) || PyByteArray_Check(s) || !PySequence_Check(s))
    throw py::type_error(std::string(func) + "(): argument '" + arg + "' must be a sequence of str, not " +
                         Py_TYPE(s)->tp_name);
  const Py_ssize_t n = PySequence_Size(s);
  if (n < 0) throw py::error_already_set();
  TextBatch batch;
  // A dishonest len() must not turn into one huge allocation up front; the vectors grow as items
  // actually arrive.
  const auto reserve = static_cast<size_t>(std::min<Py_ssize_t>(n, Py_ssize_t{1} << 16));
  batch.texts.reserve(reserve);
  if (keep_items) batch.items.reserve(reserve);
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* raw = PySequence_GetItem(s, i);
    if (raw == nullptr) {
      if (!PyErr_ExceptionMatches(PyExc_IndexError)) throw py::error_already_set();
      PyErr_Clear();
      throw std::runtime_error(std::string(func) + "(): argument '" + arg + "' changed size while it was read: len() was " +
                               std::to_string(n) + ", item " + std::to_string(i) + " is missing");
    }
    py::object item = py::reinterpret_steal<py::object>(raw);
    // The argument's name with its index is only built for an error message.
    const bool ok = PyUnicode_Check(raw) && PyUnicode_GetLength(raw) <= max_length;
    batch.texts.push_back(to_text(item, func, ok ? std::string() : std::string(arg) + "[" + std::to_string(i) + "]", max_length));
    if (keep_items) batch.items.push_back(std::move(item));
    if ((i & 4095) == 4095 && PyErr_CheckSignals() != 0) throw py::error_already_set();
  }
  return batch;
}

// Returns the slices of a str object for the given spans (no re-encoding). Needs the GIL.
inline py::list substrings(py::handle str, const std::vector<Span>& spans) {
  py::list out(spans.size());
  for (size_t k = 0; k < spans.size(); ++k) {
    PyObject* piece = PyUnicode_Substring(str.ptr(), spans[k].first, spans[k].second);
    if (piece == nullptr) throw py::error_already_set();
    PyList_SET_ITEM(out.ptr(), static_cast<Py_ssize_t>(k), piece);  // steals the reference
  }
  return out;
}

// The documented reading rule of every batch function, appended to its docstring.
inline constexpr const char* kBatchReadingRule =
    " Each sequence is read once, before any work: len() once, then items 0 .. len-1 by index (a"
    " len() that grows is read at its first value; a sequence that shrinks meanwhile raises"
    " RuntimeError); every item must be a str. workers <= 0 uses every available core, and no more"
    " threads than cores (nor than items) are started.";

inline void check_unit_interval(double value, const char* func, const char* arg) {
  if (!(value >= 0.0 && value <= 1.0))
    throw py::value_error(std::string(func) + "(): " + arg + " must be in [0, 1], got " + std::to_string(value));
}

}  // namespace asap::bind
