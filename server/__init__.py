"""lookserve.server."""
