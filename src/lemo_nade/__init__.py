"""lemo-nade: LLM-guided neural architecture discovery (LeMo-NADe, arXiv 2402.18443)."""

__version__ = "0.1.0"
