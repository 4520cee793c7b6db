"""Stage 4, evaluate: predictions, metrics per cell, transfer relations, tables, the summary and plots."""
