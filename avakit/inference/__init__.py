"""Serving a trained run: `predict` scores photos through a `scorer` (torch or `onnx_runtime`, which
needs no torch), with `preprocess` matching training; `export` writes the ONNX file.
"""
