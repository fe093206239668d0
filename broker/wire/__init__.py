"""OpenAI wire types, one module per resource; everything is re-exported here.

Shared by api and workers. Inbound bodies are lenient (unknown fields are
ignored) but validated where read; optional fields default to UNSET so
re-encoding forwards exactly what the client sent. Each module names the API reference it follows.
Anthropic's Messages API (messages.py) and OpenAI's Responses API (responses.py) are imported by
their module names, not re-exported: their Message, Usage, Tool... are other things than Chat's.
"""

from broker.wire.chat import *  # noqa: F401,F403
from broker.wire.chat import __all__ as _chat_all
from broker.wire.completions import *  # noqa: F401,F403
from broker.wire.completions import __all__ as _completions_all
from broker.wire.embeddings import *  # noqa: F401,F403
from broker.wire.embeddings import __all__ as _embeddings_all

__all__ = [*_chat_all, *_completions_all, *_embeddings_all]
