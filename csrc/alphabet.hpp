// Dense ids for the distinct code points of one string, so that per-character tables are flat
// arrays instead of hash maps on the hot paths.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

#include "text.hpp"

namespace asap {

class Alphabet {
 public:
  static constexpr int32_t kAbsent = -1;

  Alphabet() { ascii_.fill(kAbsent); }
  explicit Alphabet(TextView text) { assign(text); }

  // Forgets every id and numbers the distinct code points of text from 0 in order of appearance.
  void assign(TextView text) {
    ascii_.fill(kAbsent);
    // Clearing costs the table's size, which the largest text seen so far set: after one section
    // of 100k distinct characters, clearing that table for each of 100k two-character sections
    // would cost more than difflib's whole scan. A table much larger than this text needs is
    // dropped instead (grow() makes a fresh one), so the cost stays O(len(text)).
    if (slots_.size() > 8 * text.size() + 64) {
      slots_.clear();
      slots_.shrink_to_fit();
      mask_ = 0;
    } else {
      std::fill(slots_.begin(), slots_.end(), Slot{});
    }
    wide_ = 0;
    size_ = 0;
    for (char32_t c : text) insert(c);
  }

  int32_t size() const noexcept { return size_; }

  int32_t id(char32_t c) const noexcept {
    if (c < 128) return ascii_[c];
    if (slots_.empty()) return kAbsent;
    for (size_t h = hash(c) & mask_;; h = (h + 1) & mask_) {
      const Slot& s = slots_[h];
      if (s.id == kAbsent) return kAbsent;
      if (s.code == c) return s.id;
    }
  }

 private:
  struct Slot {
    char32_t code = 0;
    int32_t id = kAbsent;
  };

  static size_t hash(char32_t c) noexcept { return (static_cast<uint64_t>(c) * 0x9E3779B97F4A7C15ull) >> 40; }

  void insert(char32_t c) {
    if (c < 128) {
      if (ascii_[c] == kAbsent) ascii_[c] = size_++;
      return;
    }
    if (slots_.empty() || 2 * (wide_ + 1) > slots_.size()) grow();
    for (size_t h = hash(c) & mask_;; h = (h + 1) & mask_) {
      Slot& s = slots_[h];
      if (s.id == kAbsent) {
        s = {c, size_++};
        ++wide_;
        return;
      }
      if (s.code == c) return;
    }
  }

  void grow() {
    std::vector<Slot> old;
    old.swap(slots_);
    slots_.assign(old.empty() ? 16 : 2 * old.size(), Slot{});
    mask_ = slots_.size() - 1;
    for (const Slot& s : old) {
      if (s.id == kAbsent) continue;
      for (size_t h = hash(s.code) & mask_;; h = (h + 1) & mask_) {
        if (slots_[h].id == kAbsent) {
          slots_[h] = s;
          break;
        }
      }
    }
  }

  std::array<int32_t, 128> ascii_{};
  std::vector<Slot> slots_;
  size_t mask_ = 0;
  size_t wide_ = 0;
  int32_t size_ = 0;
};

}  // namespace asap
