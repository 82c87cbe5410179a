"""Reproducibility plumbing, used by ``data``, ``training`` and ``experiments`` (``core``
stays free of it): the config loader, the stage contract, the papermill runner, manifests and
atomic I/O, assets, plotting. It imports no layer, except that the runner (an entry point)
looks a stage's ``Config`` up in ``pluralign.experiments`` by name."""
