"""Export: checkpoints to ONNX, TensorRT engines and Triton repositories, with parity checks."""
