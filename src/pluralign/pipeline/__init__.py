"""Reproducibility plumbing, usable from every layer: the config loader, the stage contract,
the papermill runner, manifests and atomic I/O, assets, plotting."""
