"""Run reports (``lemo-nade report``) and run comparisons (``lemo-nade compare``).

- :mod:`.data`: what a report shows, as plain data (pure): the paper-style summary row,
  the ``retrain.json`` hook, the Pareto front, the lineage, the compare rows.
- :mod:`.plots`: the matplotlib plots (Agg), imported only when a report is drawn.
- :mod:`.render`: Markdown and self-contained HTML, written atomically.
- :mod:`.compare`: the compare table as rich, JSON or CSV.
"""
