"""Reports from the results store: the paper's tables and figures, a leaderboard, and the
comparison of a new defense with a baseline. Everything reads records only (``records.py``), so
a report re-runs at any time without training."""
