"""Stage 1: the direct-thought anchor (1a) and anchor-guided coarse pruning (1b) with an LLM."""
