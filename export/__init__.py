"""Torch side: the COVER model, weight loading, ONNX export and TensorRT engine build."""
