"""The imgcls client: ``Client`` (sync) and ``AsyncClient``.

>>> from imgcls.client import Client
>>> with Client("127.0.0.1:50051") as client:
...     client.classify("cat.jpg", top_k=3)
[Prediction(label='Egyptian cat', score=0.3677..., index=285), ...]
"""

from imgcls.client.client import AsyncClient, ClassifyOptions, Client, ClientError, Prediction, StreamResult

__all__ = ["AsyncClient", "ClassifyOptions", "Client", "ClientError", "Prediction", "StreamResult"]
