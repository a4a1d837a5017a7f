"""backdoor-defense-bench: core (data, models, trainer, metrics, grid, results store)."""

__version__ = "0.1.0"
