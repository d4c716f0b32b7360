"""lookserve.ui."""
