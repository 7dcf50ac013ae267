"""The imgcls server: engine (models, batcher, preprocessing), ONNX Runtime backend and gRPC layer."""
