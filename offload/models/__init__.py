"""Model store, names, GGUF metadata, Modelfiles, the starter model."""
