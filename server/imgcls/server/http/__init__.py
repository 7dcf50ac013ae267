"""The HTTP front door: one ASGI app on uvicorn, on the gRPC server's event loop, over the same engine.

- ``v2``: the Open Inference Protocol REST API (KServe v2, Triton's extensions) on the v2 core.
- ``hf``: the Hugging Face Inference API for image classification (``POST /models/{model}``).
- ``v1``: imgcls.v1's unary methods as JSON (``POST /v1/classify``, ``GET /v1/models[/{name}]``).
- ``guard``: tokens and body limits from the headers, before a body byte is read; ``read_body``.
- ``errors``: error kinds to HTTP statuses, in one place; bodies ``{"error": "..."}``.
- ``door``: ``HttpFrontDoor`` (binds, runs uvicorn step by step, drains on stop) and the bounded protocol.
"""
