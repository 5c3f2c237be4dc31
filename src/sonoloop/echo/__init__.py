"""Echo measurements (pure NumPy, no Django)."""
