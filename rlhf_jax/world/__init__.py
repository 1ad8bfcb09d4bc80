"""The synthetic instruction world: tasks with checkable answers, a gold labeler standing in for
human labelers, noisy labelers sampled from it, and the datasets built from them (`datasets`, a
TFDS builder). Sits above `data` (it uses its tokenizer and builders) and `rl` (the gold labeler
as a rollout's score function); nothing below it imports it."""
