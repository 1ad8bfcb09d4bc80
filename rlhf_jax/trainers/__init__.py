"""Trainers: one `train_and_evaluate(config, workdir) -> summary` per stage of the recipe.

  sft      supervised fine-tuning (and pretraining, with the loss on every token)
  reward   the K-wise reward model
  ppo      PPO and PPO-ptx against the reward model (or the world's gold labeler)

`config.default_config(stage)` gives every field a trainer reads; `setup` turns a config into a
tokenizer, data, model and optimizer; `run` is the machinery they share (state on the mesh, the
resume order, the loop, evaluation, the export and the summary). A config and a workdir are all a
trainer needs, so a notebook calls them exactly as `python -m experiments.<stage>` does.

Imports the floors below it (`world`, `data`, `rl`, `training`, `generation`, `sharding`,
`losses`, `models`), never `recipes` or `experiments`.
"""
