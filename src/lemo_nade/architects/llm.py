"""LLM architects on any OpenAI-compatible chat endpoint, through the official SDK.

``--llm PROVIDER:MODEL`` where PROVIDER is one of :data:`PRESETS` (all speak
``/v1/chat/completions``; only the default base URL and key variable differ):

========  =====================================================  ================
provider  default base URL                                       key variable
========  =====================================================  ================
openai    https://api.openai.com/v1 (the SDK's default)          OPENAI_API_KEY
gemini    https://generativelanguage.googleapis.com/v1beta/openai/  GEMINI_API_KEY
ollama    http://localhost:11434/v1  (``ollama serve``)           none needed
vllm      http://localhost:8000/v1   (``vllm serve MODEL``)       none needed
llamacpp  http://localhost:8080/v1   (``llama-server -m F.gguf``)  none needed
========  =====================================================  ================

``base_url`` and ``api_key_env`` in the config override the preset. The key is read
from the environment at start-up, passed to the SDK and nowhere else: it is not in the
config, the store, the logs or the recorded calls.

Retries with exponential backoff on 429, 5xx, connection errors and timeouts are the
SDK's own (``max_retries``); a request that still fails stops the run cleanly
(:class:`ArchitectUnavailable`), to be continued with ``lemo-nade resume``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from lemo_nade import prompts
from lemo_nade.architects import (
    Architect,
    ArchitectError,
    ArchitectUnavailable,
    Check,
    Checks,
    Factory,
    context,
    llm_settings,
    reachable,
    register,
    stream,
)
from lemo_nade.architects.proposals import proposal_from_answer
from lemo_nade.architects.sampling import call_seed, temperature
from lemo_nade.net import is_loopback
from lemo_nade.records import Proposal, ProposalRequest
from lemo_nade.usage import LLMCall, Usage

if TYPE_CHECKING:
    from lemo_nade.config import RunConfig


@dataclass(frozen=True)
class Preset:
    base_url: str | None  # None: the SDK's default (OpenAI)
    key_env: str
    needs_key: bool
    local: bool  # runs on the user's hardware: tokens cost nothing by default
    how_to_start: str


PRESETS: dict[str, Preset] = {
    "openai": Preset(None, "OPENAI_API_KEY", True, False, "https://platform.openai.com"),
    "gemini": Preset(
        "https://generativelanguage.googleapis.com/v1beta/openai/",
        "GEMINI_API_KEY",
        True,
        False,
        "a key from https://aistudio.google.com",
    ),
    "ollama": Preset("http://localhost:11434/v1", "OLLAMA_API_KEY", False, True, "ollama serve"),
    "vllm": Preset("http://localhost:8000/v1", "VLLM_API_KEY", False, True, "vllm serve MODEL"),
    "llamacpp": Preset(
        "http://localhost:8080/v1", "LLAMACPP_API_KEY", False, True, "llama-server -m MODEL.gguf"
    ),
}

# List prices in USD per 1M tokens (input, output), as published when this table was
# written; override or extend with `prices` in the config. Unknown models cost "unknown".
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4-1106-preview": (10.0, 30.0),  # the paper's model (footnote 1: GPT-4 Turbo)
    "gpt-4-turbo": (10.0, 30.0),
    "gpt-4-turbo-preview": (10.0, 30.0),
    "gpt-4o": (2.5, 10.0),
    "gpt-4o-mini": (0.15, 0.6),
    "gpt-4.1": (2.0, 8.0),
    "gpt-4.1-mini": (0.4, 1.6),
    "gemini-1.5-pro": (1.25, 5.0),
    "gemini-1.5-flash": (0.075, 0.3),
    "gemini-2.0-flash": (0.1, 0.4),
}
CHECK_TIMEOUT_S = 10.0


class OpenAIArchitect:
    """Asks a chat model for the next ``class Net``; one call per attempt."""

    def __init__(
        self,
        provider: str,
        model: str,
        config: RunConfig,
        api_key: str,
        base_url: str | None,
    ) -> None:
        import openai  # the SDK is imported only when an LLM architect is used

        self.name = f"{provider}:{model}"
        self.provider = provider
        self.model = model
        self.config = config
        self.base_url = base_url
        self.price = price_for(model, config.prices, PRESETS[provider].local)
        self._openai = openai
        self._client = openai.OpenAI(
            api_key=api_key,
            base_url=base_url,
            timeout=config.llm_timeout_s,
            max_retries=config.llm_retries,
        )

    def check(self) -> None:
        """Fail fast, before any training, when the endpoint is unreachable or the key
        is refused. A server without ``/models`` (404) is accepted."""
        openai = self._openai
        client = self._client.with_options(timeout=CHECK_TIMEOUT_S, max_retries=0)
        where = self.base_url or "the OpenAI API"
        try:
            client.models.list()
        except openai.NotFoundError:
            return
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise ArchitectError(
                f"llm: {where} refused the API key ({exc.status_code}); check ${self._key_env()}"
            ) from None
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            start = PRESETS[self.provider].how_to_start
            raise ArchitectError(
                f"llm: cannot reach {where} ({type(exc).__name__}); start the server "
                f"({start}) or set base_url (--set base_url=URL)"
            ) from None
        except openai.APIStatusError as exc:
            raise ArchitectError(
                f"llm: {where} answered {exc.status_code} to a model list request; "
                "check base_url (it usually ends in /v1)"
            ) from None

    def _key_env(self) -> str:
        return endpoint(self.provider, self.config)[1]

    def propose(self, request: ProposalRequest) -> Proposal:
        openai = self._openai
        cfg = self.config
        chat = prompts.messages(request, cfg.initial_command, cfg.resamples)
        params: dict[str, Any] = {
            "model": self.model,
            "temperature": temperature(
                request, cfg.temperature, cfg.retry_temperature, cfg.resamples
            ),
            "seed": call_seed(request),
            "max_tokens": cfg.llm_max_tokens,
        }
        start = time.perf_counter()
        try:
            chat, got = self._ask_within_context(request, chat, params)
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise ArchitectUnavailable(
                f"{self.name}: the API key was refused ({exc.status_code}); "
                f"check ${self._key_env()}"
            ) from None
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            raise ArchitectUnavailable(
                f"{self.name}: no answer after {cfg.llm_retries} retries "
                f"({type(exc).__name__}: {exc})"
            ) from None
        except openai.APIStatusError as exc:
            if exc.status_code == 429 or exc.status_code >= 500:
                raise ArchitectUnavailable(
                    f"{self.name}: still failing after {cfg.llm_retries} retries "
                    f"(HTTP {exc.status_code})"
                ) from None
            hint = " even with no earlier exchanges" if context.too_long(str(exc)) else ""
            raise ArchitectUnavailable(
                f"{self.name}: the request was refused{hint} "
                f"(HTTP {exc.status_code}: {_short(str(exc))})"
            ) from None
        except (openai.APIResponseValidationError, ValueError) as exc:
            # A 200 whose body is not a chat completion: a broken answer, not an outage.
            latency = time.perf_counter() - start
            error = f"the endpoint's answer was not a valid chat completion ({_short(str(exc))})"
            usage = self._usage(0, 0, latency, reported=False)
            call = self._call(request, chat, params, "", None, usage, error)
            return Proposal(code="", rejected=error, usage=usage, calls=(call,))
        except stream.Broken as exc:  # mid-answer: this attempt fails, the next one may not
            error = f"the answer broke off ({_short(str(exc))})"
            usage = self._usage(0, 0, time.perf_counter() - start, reported=False)
            call = self._call(request, chat, params, "", None, usage, error)
            return Proposal(code="", rejected=error, usage=usage, calls=(call,))
        latency = time.perf_counter() - start
        usage = self._usage(got.prompt_tokens, got.completion_tokens, latency, got.reported)
        call = self._call(request, chat, params, got.text, got.finish, usage, None)
        return proposal_from_answer(got.text, got.finish, usage, call, request)

    def _ask_within_context(
        self, request: ProposalRequest, chat: list[dict[str, str]], params: dict[str, Any]
    ) -> tuple[list[dict[str, str]], stream.Answer]:
        """The chat sent and its answer; refused as longer than the model's context, the
        chat again with fewer earlier exchanges (:mod:`.context`)."""
        for shorter in context.shorter(request):
            try:
                return chat, self._ask(chat, params)
            except self._openai.BadRequestError as exc:
                if not context.too_long(str(exc)):
                    raise
            chat = prompts.messages(shorter, self.config.initial_command, self.config.resamples)
        return chat, self._ask(chat, params)

    def _ask(self, chat: list[dict[str, str]], params: dict[str, Any]) -> stream.Answer:
        """One answer, streamed unless ``llm_stream`` is off (:mod:`.stream`)."""
        create = self._client.chat.completions.create
        if not self.config.llm_stream:
            return stream.from_response(create(messages=chat, **params))  # type: ignore[arg-type]
        streamed = {"stream": True, "stream_options": {"include_usage": True}}
        chunks = create(messages=chat, **params, **streamed)  # type: ignore[call-overload]
        return stream.read(chunks, chat)

    def _usage(
        self, prompt_tokens: int, completion_tokens: int, latency: float, reported: bool
    ) -> Usage:
        cost = None
        if self.price is not None:
            cost = (prompt_tokens * self.price[0] + completion_tokens * self.price[1]) / 1e6
        return Usage(
            calls=1,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            latency_s=round(latency, 4),
            cost_usd=cost,
            usage_reported=reported,
        )

    def _call(
        self,
        request: ProposalRequest,
        chat: list[dict[str, str]],
        params: dict[str, Any],
        text: str,
        finish: str | None,
        usage: Usage,
        error: str | None,
    ) -> LLMCall:
        """What is stored for replay: the request and the answer, never the key."""
        payload = {
            "architect": self.name,
            "base_url": self.base_url,
            "request": {"messages": chat, **params},
            "response": {"text": text, "finish_reason": finish},
            "at": time.time(),
        }
        return LLMCall(request.iteration, request.attempt, usage, error, payload)


def price_for(
    model: str, overrides: dict[str, tuple[float, float]], local: bool
) -> tuple[float, float] | None:
    if model in overrides:
        return overrides[model]
    if local:
        return (0.0, 0.0)
    return DEFAULT_PRICES.get(model)


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_local_url(url: str | None) -> bool:
    return is_loopback(urlparse(url).hostname if url else None)


def endpoint(provider: str, config: RunConfig) -> tuple[str | None, str]:
    """Where to send requests (None: the SDK's default, OpenAI) and which environment
    variable holds the key: the config's ``base_url``/``api_key_env`` over the preset."""
    preset = PRESETS[provider]
    return config.base_url or preset.base_url, config.api_key_env or preset.key_env


def _factory(provider: str) -> Factory:
    def create(arg: str, **options: Any) -> Architect:
        from lemo_nade.config import build_config

        if not arg:
            raise ArchitectError(
                f"llm: name the model, e.g. '{provider}:{_example(provider)}' (got '{provider}')"
            )
        config: RunConfig = options.get("config") or build_config({})
        preset = PRESETS[provider]
        base_url, key_env = endpoint(provider, config)
        api_key = os.environ.get(key_env, "")
        if not api_key:
            if preset.needs_key and not is_local_url(base_url):
                raise ArchitectError(
                    f"llm: {provider} needs an API key: export {key_env}=... "
                    "(or name another variable with --set api_key_env=NAME)"
                )
            api_key = "unused"  # local servers ignore it; the SDK requires one
        if config.max_cost_usd is not None and price_for(arg, config.prices, preset.local) is None:
            raise ArchitectError(
                f"max_cost_usd: no price known for model {arg!r}; add "
                f"--set 'prices.\"{arg}\"=[INPUT, OUTPUT]' in USD per 1M tokens"
            )
        architect = OpenAIArchitect(provider, arg, config, api_key, base_url)
        if options.get("check"):
            architect.check()
        return architect

    return create


def _example(provider: str) -> str:
    return {
        "openai": "gpt-4-1106-preview",
        "gemini": "gemini-1.5-pro",
        "ollama": "llama3.1",
        "vllm": "Qwen/Qwen2.5-Coder-7B-Instruct",
        "llamacpp": "default",
    }[provider]


def _checks(provider: str) -> Checks:
    def checks(config: RunConfig) -> list[Check]:
        """The endpoint, whether the key's variable is set (never its value), and
        whether the endpoint answers a model list."""
        base_url, key_env = endpoint(provider, config)
        key_set = bool(os.environ.get(key_env))
        needed = PRESETS[provider].needs_key
        note = "" if key_set or needed else " (not needed for a local server)"
        key = f"${key_env} is {'set' if key_set else 'not set'}{note}"
        return [
            llm_settings(config),
            Check("endpoint", "info", base_url or "https://api.openai.com/v1 (SDK default)"),
            Check("api key", "ok" if key_set or not needed else "fail", key),
            reachable(config),
        ]

    return checks


for _provider in PRESETS:
    register(_provider, checks=_checks(_provider))(_factory(_provider))
