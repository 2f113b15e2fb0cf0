"""Hardware-aware architecture search (supernets, latency tables, evolutionary search)."""
