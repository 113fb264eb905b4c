"""The whole pipeline as one library call (``fxmeta.pipeline.transform.transform``), and latency."""
