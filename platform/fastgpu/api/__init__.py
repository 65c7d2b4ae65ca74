"""HTTP control API (``/api/v1``): the FastAPI app (:mod:`.app`) served by Ray Serve
(:mod:`.serve`)."""
