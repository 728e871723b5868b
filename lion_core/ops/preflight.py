"""Checks before a run spends anything: every problem a run would otherwise meet minutes in —
after the base student was built, after the first training — found in seconds, and reported
together in one message.

- every API key the run needs resolves (environment variable or secret block);
- every endpoint that is not the offline world answers: `GET <base_url>/models` (free), or,
  where a server has no model list, one chat request of one token; a refused key, an unknown
  model or URL, a timeout and a refused connection are problems;
- the run's storage root takes a write (a probe file, deleted at once);
- the initial data parses and has rows;
- the config is coherent: warnings (not errors) for a student and hyperparameters that do not
  fit, and for seeds the offline world cannot answer.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

from lion_core.config import EndpointConfig, LionConfig
from lion_core.errors import LionError, PreflightError
from lion_core.llm.keys import resolve_api_key
from lion_core.run import layout
from lion_core.run.store import RunStore

PROBE_TIMEOUT_S = 5.0  # per endpoint; endpoints are probed at once


@dataclass
class PreflightReport:
    """What the checks found: problems (the run cannot work) and warnings (it may not be what
    the user meant)."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def raise_for_problems(self) -> None:
        if self.problems:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            raise PreflightError(
                f"preflight: {len(self.problems)} problem(s), found before anything was built "
                f"or trained:\n{lines}"
            )


def roles_in_use(config: LionConfig) -> list[str]:
    """The endpoints this run will call: the teacher always; the referee in the `lion` arm; the
    generator unless the arm is `seed-only`; the judge when question sets are evaluated."""
    roles = ["teacher"]
    if config.arm == "lion":
        roles.append("referee")
    if config.arm != "seed-only":
        roles.append("generator")
    if config.evaluation.sets:
        roles.append("judge")
    return roles


def preflight(
    config: LionConfig,
    *,
    secret_loader: Callable[[str], str] | None = None,
    timeout: float = PROBE_TIMEOUT_S,
) -> PreflightReport:
    """Run every check; never raises for what it finds (see `PreflightReport`)."""
    started = time.monotonic()
    report = PreflightReport()
    endpoints = config.endpoints()
    probes: dict[tuple[str, str | None], list[str]] = {}  # (base_url, key) -> roles
    for role in roles_in_use(config):
        endpoint = endpoints[role]
        if endpoint.is_offline:
            continue
        try:
            key = resolve_api_key(endpoint, role, secret_loader=secret_loader)
        except LionError as exc:
            report.problems.append(str(exc))
            continue
        probes.setdefault((endpoint.base_url, key), []).append(role)
    with ThreadPoolExecutor(max_workers=max(1, len(probes))) as pool:
        found = pool.map(
            lambda item: probe_endpoint(item[1], endpoints, item[0][1], timeout), probes.items()
        )
        for problems, warnings in found:
            report.problems += problems
            report.warnings += warnings
    report.problems += check_storage(config)
    report.problems += check_initial_data(config)
    report.warnings += coherence_warnings(config)
    report.warnings += tracking_warnings(config)
    report.seconds = round(time.monotonic() - started, 2)
    return report


def probe_endpoint(
    roles: list[str], endpoints: dict[str, EndpointConfig], key: str | None, timeout: float
) -> tuple[list[str], list[str]]:
    """(problems, warnings) of one base URL, used by `roles` with one key."""
    endpoint = endpoints[roles[0]]
    url = endpoint.base_url.rstrip("/")
    who = "/".join(roles)
    field_ = f"{roles[0]}.base_url"
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with httpx.Client(timeout=timeout, headers=headers) as client:
            listed = client.get(f"{url}/models")
            if listed.status_code == 200:
                return [], _model_warnings(roles, endpoints, listed)
            if listed.status_code in (401, 403):
                return [_refused(who, url, listed, endpoint)], []
            # no model list here (404/405, a gateway): one tiny request tells
            asked = client.post(
                f"{url}/chat/completions",
                json={
                    "model": endpoint.model,
                    "messages": [{"role": "user", "content": "ping"}],
                    "max_tokens": 1,
                },
            )
    except httpx.TimeoutException:
        return [f"{who}: {field_} {url} did not answer within {timeout:g} s"], []
    except httpx.HTTPError as exc:
        return [f"{who}: {field_} {url} is unreachable: {exc}"], []
    if asked.status_code == 200:
        return [], []
    if asked.status_code in (401, 403):
        return [_refused(who, url, asked, endpoint)], []
    return [
        f"{who}: {url} answered a one-token request for model {endpoint.model!r} with HTTP "
        f"{asked.status_code}: {_error_text(asked)} (check {field_} and {roles[0]}.model)"
    ], []


def _refused(who: str, url: str, response: httpx.Response, endpoint: EndpointConfig) -> str:
    source = (
        f"the variable {endpoint.api_key_env}"
        if endpoint.api_key_env
        else f"secret block {endpoint.api_key_secret!r}"
        if endpoint.api_key_secret
        else "no key (api_key_env is empty)"
    )
    return (
        f"{who}: {url} refused the API key from {source} (HTTP {response.status_code}: "
        f"{_error_text(response)})"
    )


def _error_text(response: httpx.Response, limit: int = 200) -> str:
    try:
        body = response.json()
        error = body.get("error") if isinstance(body, dict) else None
        text = error.get("message") if isinstance(error, dict) else error or body
    except ValueError:
        text = response.text
    return str(text).strip()[:limit] or response.reason_phrase


def _model_warnings(
    roles: list[str], endpoints: dict[str, EndpointConfig], listed: httpx.Response
) -> list[str]:
    """A configured model the server does not list (some servers serve aliases: a warning)."""
    try:
        ids = {m.get("id") for m in listed.json().get("data", []) if isinstance(m, dict)}
    except (ValueError, AttributeError):
        return []
    if not ids:
        return []
    return [
        f"{role}.model {endpoints[role].model!r} is not among the {len(ids)} model(s) "
        f"{endpoints[role].base_url} lists"
        for role in roles
        if endpoints[role].model not in ids
    ]


def check_storage(config: LionConfig) -> list[str]:
    """The root takes a write: a probe file, deleted at once."""
    root = config.storage.root
    probe = layout.preflight_probe(uuid.uuid4().hex[:12])
    try:
        storage = RunStore.open(root, config.storage.options).storage
        storage.write_bytes(probe, b"lion preflight\n", overwrite=True)
        storage.delete(probe)
    except Exception as exc:
        return [f"storage.root {root} is not writable: {_first_line(exc)}"]
    return []


def check_initial_data(config: LionConfig) -> list[str]:
    """`pools.initial_data` parses into at least one seed."""
    path = config.pools.initial_data
    if not path:
        return []
    from lion_core.method.seeds import load_initial_data

    try:
        seeds = load_initial_data(
            path,
            config.storage.options,
            limit=config.pools.limit,
            max_instruction_chars=config.pools.max_instruction_chars,
        )
    except Exception as exc:
        return [f"pools.initial_data: {_first_line(exc)}"]
    if seeds.pool.empty:
        return [f"pools.initial_data: {path} has no usable rows"]
    return []


def coherence_warnings(config: LionConfig) -> list[str]:
    """Settings that run but are unlikely to be what the user meant."""
    warnings = []
    lr = config.training.learning_rate
    if config.student.tiny is not None and lr < 1e-4:
        warnings.append(
            f"training.learning_rate {lr:g} is meant for a 7B student; a tiny student "
            "(student.tiny) learns little with it (the demo preset uses 1e-3 and 20 epochs)"
        )
    if config.student.model is not None and lr >= 1e-3 and config.training.lora is None:
        warnings.append(
            f"training.learning_rate {lr:g} is high for fine-tuning all weights of "
            f"{config.student.model} (the paper: 2e-5)"
        )
    if config.pools.initial_data and config.teacher.is_offline:
        warnings.append(
            f"pools.initial_data {config.pools.initial_data} with teacher.base_url 'offline': the "
            "offline world only answers its own task families; other instructions get refusals"
        )
    return warnings


# training.report_to -> the modules transformers' callback imports (any one of them will do)
TRACKING_MODULES = {
    "tensorboard": ("tensorboard", "tensorboardX"),
    "wandb": ("wandb",),
    "mlflow": ("mlflow",),
}


def tracking_warnings(config: LionConfig) -> list[str]:
    """`training.report_to` integrations whose package is not installed here (where the
    training runs, unless GPU stages run elsewhere): the Trainer would fail to start."""
    import importlib.util

    return [
        f"training.report_to {name}: the {TRACKING_MODULES[name][0]} package is not installed "
        f"(pip install {TRACKING_MODULES[name][0]}); training would fail to start"
        for name in config.training.report_to
        if not any(importlib.util.find_spec(m) for m in TRACKING_MODULES[name])
    ]


def _first_line(exc: BaseException) -> str:
    """The error on one line (at most 400 characters)."""
    return " ".join(str(exc).split())[:400] or type(exc).__name__
