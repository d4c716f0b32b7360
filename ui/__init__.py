"""lookserve.ui: the web page (``lookserve ui``) — shop the look and footwear thumbnails in a
Streamlit app that talks to Triton only through :mod:`lookserve.client`; see ui/README.md."""
