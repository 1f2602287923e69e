"""The text core: trace parsing, step splitting and exact difflib matching (C++, no torch)."""
