"""The application's modules: one concept per module (see DESIGN.md)."""
