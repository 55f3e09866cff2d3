"""Generation for the OpenAI-compatible routes: ``model`` → the deployment serving it → outputs.

Everything goes through :class:`DeploymentService` (tenancy, the idle clock, the endpoint call),
exactly as ``POST /v0/inference`` does; this module only resolves ``model`` into a target with
OpenAI-style errors and lays the ``n`` choices out in OpenAI's order.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

from api.domain.deployments import ChatMessage, GenerationOutput, GenerationParameters, InferenceRequest
from api.domain.enums import DeploymentStatus
from api.domain.errors import BackendError, Conflict, NotFound
from api.domain.openai_chat import ModelNotDeployed, ModelNotFound
from api.services.deployments import DeploymentService

Prompt = str | list[ChatMessage]


@dataclass(frozen=True)
class Target:
    """Where a ``model`` is served: an adapter (found through its deployment), or a deployment's
    base model (``model`` = the base model's name, served by one of the tenant's deployments)."""

    adapter_id: str | None
    deployment_id: str | None

    def request(
        self, inputs: list[Prompt], params: GenerationParameters, *, stream: bool = False
    ) -> InferenceRequest:
        """The inference request for ``inputs`` here (an adapter's goes to whichever deployment
        serves it now). Typed as a list of prompts: one conversation is wrapped so it is not read
        as n prompts."""
        return InferenceRequest(
            adapter_id=self.adapter_id,
            deployment_id=None if self.adapter_id else self.deployment_id,
            inputs=inputs,
            parameters=params,
            stream=stream,
        )


@dataclass(frozen=True)
class Generated:
    deployment_id: str
    choices: list[GenerationOutput]  # prompt i, choice j at index i * n + j (OpenAI's order)
    prompt_tokens: int  # each prompt counted once, however many choices it has

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.choices)


def deploy_command(adapter_id: str) -> str:
    return f"fastuner deployments create {adapter_id}"


class OpenAIChatService:
    def __init__(self, deployments: DeploymentService) -> None:
        self.deployments = deployments

    def resolve(self, tenant_id: str, model: str) -> Target:
        """The target for ``model``; 404 ``model_not_found`` / 409 ``model_not_deployed``."""
        try:
            row = self.deployments.resolve_target(tenant_id, None, model)
            return Target(adapter_id=model, deployment_id=row.id)
        except NotFound:
            pass
        except Conflict:
            raise self._not_deployed(tenant_id, model) from None
        live, _ = self.deployments.list_page(tenant_id, limit=200, live_only=True)
        serving = [d for d in live if d.base_model == model and d.status == DeploymentStatus.IN_SERVICE]
        if serving:
            return Target(adapter_id=None, deployment_id=serving[0].id)
        raise ModelNotFound(
            f"The model `{model}` does not exist or you do not have access to it. "
            "Use one of your adapter ids (adp_…), see GET /v1/models."
        )

    def _gone(self, tenant_id: str, model: str, target: Target) -> ModelNotFound | ModelNotDeployed:
        """The error for a target torn down since :meth:`resolve` (what it would answer now)."""
        if target.adapter_id is None:
            return ModelNotFound(f"The model `{model}` is no longer served by a deployment of yours.")
        return self._not_deployed(tenant_id, target.adapter_id)

    def _not_deployed(self, tenant_id: str, adapter_id: str) -> ModelNotDeployed:
        live, _ = self.deployments.list_page(tenant_id, limit=200, live_only=True)
        creating = [d for d in live if adapter_id in d.adapter_ids and d.status == DeploymentStatus.CREATING]
        if creating:
            return ModelNotDeployed(
                f"The model `{adapter_id}` is being deployed (deployment {creating[0].id} is still "
                f"creating); retry once `fastuner deployments get {creating[0].id}` shows in_service."
            )
        return ModelNotDeployed(
            f"The model `{adapter_id}` is not deployed: no deployment in service serves it. "
            f"Deploy it with `{deploy_command(adapter_id)}` (or POST /v0/deployments "
            f'{{"adapter_ids": ["{adapter_id}"]}}), then retry.'
        )

    def generate(
        self,
        tenant_id: str,
        model: str,
        target: Target,
        prompts: list[Prompt],
        n: int,
        params: GenerationParameters,
    ) -> Generated:
        """``n`` generations per prompt. One endpoint call carries them all, except when sampling
        with a ``seed`` and ``n > 1``: the server seeds every input alike, so each choice ``j`` is its
        own call with seed ``seed + j`` (reproducible, and the choices differ)."""
        sampled_seeded = n > 1 and params.temperature > 0 and params.seed is not None
        try:
            if not sampled_seeded:
                inputs = [p for p in prompts for _ in range(n)]
                deployment_id, choices = self._call(tenant_id, target, inputs, params)
            else:
                assert params.seed is not None
                per_seed = []
                for j in range(n):
                    seeded = params.model_copy(update={"seed": (params.seed + j) % (1 << 63)})
                    deployment_id, outs = self._call(tenant_id, target, list(prompts), seeded)
                    per_seed.append(outs)
                choices = [per_seed[j][i] for i in range(len(prompts)) for j in range(n)]
        except Conflict:  # torn down since resolve(): the same answer resolve() would give now
            raise self._gone(tenant_id, model, target) from None
        prompt_tokens = sum(choices[i * n].prompt_tokens for i in range(len(prompts)))
        return Generated(deployment_id, choices, prompt_tokens)

    def generate_stream(
        self, tenant_id: str, model: str, target: Target, prompt: Prompt, params: GenerationParameters
    ) -> Generator[str | Generated]:
        """One prompt, one choice, streamed: yields each new piece of text, then the
        :class:`Generated` (its text is the pieces joined). Errors raise as in :meth:`generate`
        (the route turns them into an error event: its stream is already open)."""
        stream = self.deployments.infer_stream(tenant_id, target.request([prompt], params, stream=True))
        try:
            for item in stream:
                if isinstance(item, str):
                    yield item
                else:
                    [output] = item.outputs
                    yield Generated(item.deployment_id, [output], output.prompt_tokens)
        except Conflict:  # torn down since resolve(): the same answer resolve() would give now
            raise self._gone(tenant_id, model, target) from None
        finally:
            stream.close()

    def _call(
        self, tenant_id: str, target: Target, inputs: list[Prompt], params: GenerationParameters
    ) -> tuple[str, list[GenerationOutput]]:
        resp = self.deployments.infer(tenant_id, target.request(inputs, params))
        if len(resp.outputs) != len(inputs):  # it broke the container contract
            raise BackendError(f"the endpoint answered {len(resp.outputs)} outputs for {len(inputs)} inputs")
        return resp.deployment_id, resp.outputs
