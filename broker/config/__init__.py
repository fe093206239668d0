"""The one typed config: its Structs (model.py), per-concern settings (providers.py, cache.py,
batches.py), the loader (load.py) and the checks types cannot express (checks.py).

The rest of the broker imports from here; the modules inside import each other directly.
"""

from broker.config.load import (
    ConfigError,
    default_config,
    load,
    resolve,
    validate,
    with_files_dir,
    with_redis_url,
)
from broker.config.model import (
    DEV_API_KEY,
    AdminSettings,
    ApiKey,
    Budgets,
    CircuitSettings,
    Config,
    Deployment,
    Limits,
    ModelGroup,
    QueueSettings,
    RedisSettings,
    ResponsesSettings,
    ServerSettings,
    Tenant,
    UsageSettings,
    hash_key,
)
from broker.config.providers import (
    AnthropicProvider,
    AzureProvider,
    EntraAuth,
    BedrockProvider,
    GeminiProvider,
    MockProvider,
    OpenAIProvider,
    ProviderConfig,
    VertexProvider,
)
from broker.config.types import Secret, Strict

__all__ = [
    "DEV_API_KEY", "AdminSettings", "AnthropicProvider", "ApiKey", "AzureProvider", "BedrockProvider", "Budgets",
    "CircuitSettings", "Config", "ConfigError", "Deployment", "EntraAuth", "GeminiProvider", "Limits", "MockProvider",
    "ModelGroup", "OpenAIProvider",
    "ProviderConfig", "QueueSettings", "RedisSettings", "ResponsesSettings", "Secret", "ServerSettings", "Strict", "Tenant", "UsageSettings",
    "VertexProvider",
    "default_config", "hash_key", "load", "resolve", "validate", "with_files_dir", "with_redis_url",
]
