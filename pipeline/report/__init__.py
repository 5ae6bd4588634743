"""Self-contained HTML reports built from result stores (never recomputing an analysis)."""
