"""Recipes: whole jobs as callable stages, built from the trainers.

  instructgpt   base -> SFT -> K-wise RM -> PPO / PPO-ptx -> gold-labeler evaluation -> report,
                on the synthetic instruction world (`rlhf_jax.recipes.instructgpt`)

The top floor of the library: a recipe imports trainers, the world and everything below them;
nothing in `rlhf_jax` imports a recipe.
"""
