"""One module per DVC stage (notebook), its ``Config`` at the top; ``_rlhf`` is the plumbing
notebooks 04-06 share."""
