"""Stage 2: first-token surprisal (the scorer and its fused ops) and budgeted step pruning."""
