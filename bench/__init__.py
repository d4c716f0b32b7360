"""lookserve.bench."""
