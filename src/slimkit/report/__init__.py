"""Reports: JSON and self-contained HTML with matplotlib plots."""
