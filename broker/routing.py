"""Public model name → the deployment that serves it, and who may ask for it.

Today a model group is served by its first deployment; the roadmap's
strategies (priority, cheapest, least-busy, failover on retryable errors) plug
in here without touching the API or the workers.
"""

from __future__ import annotations

from broker.config import Config, Deployment, Tenant
from broker.errors import ModelNotFound


class Router:
    def __init__(self, config: Config) -> None:
        self.config = config

    def visible_models(self, tenant: Tenant) -> list[str]:
        names = tenant.models or list(self.config.models)
        return [n for n in names if n in self.config.models]

    def resolve(self, tenant: Tenant, model: str) -> Deployment:
        deployments = self.config.models.get(model)
        if not deployments or (tenant.models and model not in tenant.models):
            # OpenAI answers 404 for models that exist but are not yours, too: no probing.
            raise ModelNotFound(
                f"The model `{model}` does not exist or you do not have access to it.", param="model"
            )
        return deployments[0]
