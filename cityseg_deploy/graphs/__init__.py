"""ONNX graph rewrites shared by export (which writes them) and runtime (which applies them at load)."""
