"""Control plane: what happens to calls and people."""
