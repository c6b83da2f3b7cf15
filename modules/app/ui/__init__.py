"""The Gradio page, one module per tab over the typed request model (composed by page.py)."""
