"""Edge techniques: patch-based inference (MCUNetV2) and confidence cascades."""
