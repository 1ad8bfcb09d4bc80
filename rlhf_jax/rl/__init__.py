"""The RL programs: the fused rollout (`rollout`) and the PPO update with its advantages and KL
controllers (`ppo`). Each is a jitted pure function over pytrees; nothing here reads files.

Imports only the floors below it: `training` (steps, train state), `generation`, `sharding`,
`losses` and `models`.
"""
