"""Serving a model: the HTTP server (FastAPI) and the web page (Gradio)."""
