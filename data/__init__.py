"""lookserve.data."""
