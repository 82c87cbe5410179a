"""One module per DVC stage (notebook), its ``Config`` at the top; ``_rlhf`` is the RLHF
plumbing notebooks 04-06 share (preference pairs, reward models, PPO arms, evaluation)."""
