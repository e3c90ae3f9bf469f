"""Training stages (pretrain, sft, reward, ppo) and the small pieces they share (losses, optim, checkpoint)."""
