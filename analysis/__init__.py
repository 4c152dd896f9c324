"""From run records to summary.csv, tables and figures."""
