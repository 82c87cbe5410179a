"""The torch / transformers / TRL / peft wiring: model loading, generation, reward models,
the PPO runner, neural EM, judges, the FRFT refit."""
