"""`mmgpt serve`: an OpenAI-compatible Chat Completions server with dynamic batching, streaming and a playground.

app.py builds the FastAPI app and the command line; worker.py owns the model and decodes batches;
conversation.py turns OpenAI messages into the model's prompt and image; schemas.py holds the request
body and OpenAI's error shape; images.py reads data: and http(s) image URLs; metrics.py the Prometheus metrics;
exported.py serves an `mmgpt export` folder (mmgpt.exported_model) in place of a torch model.
"""
