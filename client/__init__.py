"""lookserve.client."""
