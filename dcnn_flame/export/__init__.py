"""Exports of the trained model to other runtimes (onnx.py: ONNX + onnxruntime check)."""
