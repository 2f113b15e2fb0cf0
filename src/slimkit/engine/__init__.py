"""Training engine: fit, evaluate, hooks, resume, data-parallel scale-out."""
