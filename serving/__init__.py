"""Serving side of trustgc: decoding, response schema, TorchServe adapter, client and server.

Only ``serving.handler`` and ``serving.server`` touch TorchServe; everything else is plain Python
around the core prediction API (``trustgc.trust.Predictor``).
"""
