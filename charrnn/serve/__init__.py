"""`charrnn serve`: an OpenAI-compatible HTTP API with continuous batching, and a page to write with.

Starlette on uvicorn (the optional extra `charrnn[serve]`). The event loop only parses requests
and writes answers; one worker thread (`engine.Engine`) runs every model step, for all the
streams in flight at once (`generate.stream_batch.StreamBatch`), and talks to the requests
through queues.
"""
