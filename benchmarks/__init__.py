"""imgcls benchmark harness: the raw ONNX Runtime limit, the server under load, and optional peers.

Run it with ``python -m benchmarks.run [--quick] [--out DIR] [--with-peers]``; see benchmarks/README.md.
"""
