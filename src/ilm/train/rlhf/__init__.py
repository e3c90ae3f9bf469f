"""Online RLHF (RECIPE.md section 7): the PPO engine (`ppo`), its rollouts (`rollout`), and the rounds built
on top of it. `from ilm.train.rlhf.ppo import PPOConfig, train`."""
