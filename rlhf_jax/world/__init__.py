"""The synthetic instruction world: tasks with checkable answers, a gold labeler standing in for
human labelers, noisy labelers sampled from it, and the datasets built from them."""
