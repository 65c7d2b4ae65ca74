"""HTTP control API (``/api/v1``): FastAPI app in :mod:`.app`, served by Ray Serve (:mod:`.serve`)."""
