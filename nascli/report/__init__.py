"""What people read: rich tables (and, later, plots and run comparisons)."""
