"""The papers' math on numpy/scipy (pandas for tidy result frames): Bradley-Terry, Voronoi
weights and the weighted MLE, EM, MaxMin aggregation and theory, FRFT selection, the BT label
simulator, statistics.

Nothing here imports torch, transformers or TRL (checked by import-linter in ``make lint``).
"""
