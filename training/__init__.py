"""lookserve.training."""
