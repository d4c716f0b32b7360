"""lookserve.export."""
