"""Run reports (``lemo-nade report``), run comparisons (``lemo-nade compare``), the tables
``lemo-nade show`` prints, and the sweep table (``lemo-nade sweep-report``).

- :mod:`.rows`: the per-iteration and summary rows (pure; what ``show --json`` prints).
- :mod:`.data`: what a report shows, as plain data (pure): the paper-style summary row,
  the ``retrain.json`` hook, the Pareto front, the lineage, the compare rows.
- :mod:`.plots`: the matplotlib plots (Agg), imported only when a report is drawn.
- :mod:`.tables`: the report's tables as text cells (summary, iterations, lineage with
  instruction following, instruction following per instruction).
- :mod:`.render`: the report as Markdown and as self-contained HTML text.
- :mod:`.write`: the report directory, written aside and swapped in as a whole.
- :mod:`.compare`: the compare table as rich, JSON or CSV.
- :mod:`.sweep_table`: the sweep table (Markdown, CSV, JSON) and its accuracy-vs-energy plot.

Every number in a table is printed by :func:`lemo_nade.numbers.fmt`.
"""
