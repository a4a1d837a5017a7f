"""Analyses: probes that answer one question about a method's behaviour, and the renderers of
their findings' tables.

A probe is a plugin defense (``--plugin benchmark/analyses/NAME.py``) that reuses a method's
pieces and keeps what the method throws away (per-class flags, loss ranks, the split before the
removal); most read the ground truth (``GroundTruthAnalysis``), so their records never become
rows of the tables. Their findings live in ``docs/results/analysis/<finding>/README.md`` with
the records; ``summaries`` renders each finding's table into it. Nothing here is imported by the
suite's methods, and importing this package registers nothing.
"""
