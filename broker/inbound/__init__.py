"""Inbound protocols served over Chat providers: pure translation, no I/O.

A client speaking another API (Anthropic Messages: messages.py, messages_stream.py; OpenAI
Responses: responses.py, responses_output.py, responses_stream.py) asks for a model whose
deployment speaks Chat (OpenAI-compatible, Gemini, mock). The worker's handler turns
the request into a ChatRequest, calls the provider as for any chat job, and turns the answer
back. Providers (workers/providers/) are the other side: one module set per upstream API.
"""
