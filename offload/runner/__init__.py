"""The runner subprocess and the server's handle on it."""
