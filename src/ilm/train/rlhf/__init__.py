"""Online RLHF (docs/recipe.md, Online RLHF): the PPO engine (`ppo`), its rollouts (`rollout`), and the rounds built
on top of it. `from ilm.train.rlhf.ppo import PPOConfig, train`."""
