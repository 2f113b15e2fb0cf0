"""Loss functions the training engine can use (one loss per module)."""
