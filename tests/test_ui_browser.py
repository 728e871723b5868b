"""The Prefect UI in a real browser (issue 5, section 4; issue 14): Debian's Chromium, headless,
driven by Playwright, against the UI that `prefect server start` serves for the session's
deployment stack. It finds the `lion-distill / gpu-box` deployment, opens *Run → Custom run*,
changes the run's name and two fields of the nested `config` form, submits, and watches the run
page until the run is *Completed*; the API then confirms the run used the changed values. Then
the short form (`lion-run / gpu-box`): at most 15 top-level fields, and a run started from it by
typing only into those fields completes.

Runs in `make test`, which installs Chromium with apt-get (`make test-browser`: the browser tests
alone; the `browser` fixture is conftest.py's); never lets Playwright download a browser.
Screenshots of the form and of the finished run are written to the test's tmp dir.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
import warnings

import pandas as pd
import pytest
from helpers import TINY_STUDENT, small_config
from playwright.sync_api import Error as PlaywrightError
from prefect_services import REPO, api, deploy

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# A page action may wait on an API call that waits on SQLite's lock, for up to the server's
# PREFECT_SERVER_DATABASE_TIMEOUT (60 s, tests/prefect_services.py): give each action longer.
# Under two extra CPU-bound processes one run of four failed at 71 s with 60 s here.
TIMEOUT_MS = 120_000
RUN_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def small_defaults(prefect_stack, s3_endpoint):
    """The gpu-box deployment re-deployed with an operator's defaults: a small run on a bucket
    of the moto server (`prefect deploy --params`)."""
    import boto3

    bucket = f"lion-ui-{secrets.token_hex(6)}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    options = {"endpoint_url": s3_endpoint}
    config = small_config(
        f"s3://{bucket}/ui",
        name="ui-defaults",
        **{"storage.options": options},
        # every round's student judged on 12 held-out questions: the run's scoreboard artifact
        **{"evaluation.sets": ["offline"], "evaluation.sample": 12, "evaluation.bootstrap": 50},
    )
    params = {"config": config.model_dump(mode="json", exclude_defaults=True)}
    deploy(prefect_stack.env, "lion-distill/gpu-box", params=params, LION_HOME=str(REPO))
    return config


@pytest.fixture(scope="module")
def small_form_defaults(prefect_stack, s3_endpoint):
    """The lion-run deployment re-deployed with an operator's defaults: the demo preset, one
    round, a bucket of the moto server, and the tiniest settings through `overrides`."""
    import boto3

    bucket = f"lion-form-{secrets.token_hex(6)}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    overrides = {
        "storage.options": {"endpoint_url": s3_endpoint},
        "pools.offline_seeds": 16,
        "pools.new_per_round": 6,
        "student.tiny": TINY_STUDENT,
        "student.generation.max_new_tokens": 12,
        "training.launcher": "python",
        "training.max_steps": 4,
        "training.max_length": 128,
        "training.micro_batch_size": 8,
        "training.save_steps": 2,
        "referee.max_tokens": 200,
        "evaluation.sets": [],
    }
    params = {
        "preset": "demo",
        "name": "form-defaults",
        "rounds": 1,
        "storage_root": f"s3://{bucket}/form",
        "overrides": overrides,
    }
    deploy(prefect_stack.env, "lion-run/gpu-box", params=params, LION_HOME=str(REPO))
    return {"bucket": bucket, "options": {"endpoint_url": s3_endpoint}}


def _form_field(page, label: str):
    """The input of the schema-form property whose label is exactly `label`."""
    xpath = (
        "xpath=//span[contains(@class,'schema-form-property__label')]"
        f"[normalize-space()='{label}']"
        "/ancestor::div[contains(concat(' ', @class, ' '), ' schema-form-property ')][1]"
        "//*[self::input or self::textarea]"
    )
    return page.locator(xpath).first


def test_run_from_the_ui_with_a_changed_parameter(prefect_stack, small_defaults, browser, tmp_path):
    stack = prefect_stack
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    run_name = f"ui-run-{secrets.token_hex(4)}"
    try:
        # lion-distill / gpu-box → Run → Custom run: the form, pre-filled with the
        # deployment's parameters.
        _open_custom_run(page, stack, "lion-distill", "gpu-box")
        name_field = _form_field(page, "Name (Optional)")
        name_field.wait_for()
        assert name_field.input_value() == "ui-defaults"
        new_per_round = _form_field(page, "New Per Round (Optional)")
        assert new_per_round.input_value() == "12"

        page.locator(".flow-run-name-input input").fill(run_name)
        name_field.fill("ui-changed")
        new_per_round.fill("6")
        new_per_round.scroll_into_view_if_needed()
        page.screenshot(path=str(tmp_path / "form.png"))

        run_id = _submit_and_open_run(page, stack, run_name)
        _wait_completed(page, stack, tmp_path)
        page.screenshot(path=str(tmp_path / "run.png"))
    except Exception:
        page.screenshot(path=str(tmp_path / "failure.png"))
        raise
    finally:
        page.close()

    # The API agrees: one run, the form's, with the values typed into it.
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterName,
    )

    named = FlowRunFilter(name=FlowRunFilterName(any_=[run_name]))
    (run,) = api(stack.env, lambda c: c.read_flow_runs(flow_run_filter=named))
    assert str(run.id) == run_id and run.state.is_completed()
    (tmp_path / "parameters.json").write_text(json.dumps(run.parameters, indent=1))
    config = run.parameters["config"]
    assert config["name"] == "ui-changed" and config["pools"]["new_per_round"] == 6
    assert config["storage"] == small_defaults.storage.model_dump(mode="json")
    deployment = api(stack.env, lambda c: c.read_deployment(run.deployment_id))
    assert deployment.name == "gpu-box"
    new = pd.read_parquet(
        f"{small_defaults.storage.root}/round=2/cache_pool.parquet",
        storage_options=small_defaults.storage.options,
    )
    assert 0 < len(new) <= 6

    # The run's scoreboard: the relative-score plot renders on its artifact page.
    (artifact,) = api(
        stack.env,
        lambda c: c.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["ui-changed-scoreboard"]))
        ),
    )
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    try:
        page.goto(f"{stack.server.ui_url}/artifacts/artifact/{artifact.id}")
        image = page.locator("img[alt='relative score per round']").first
        image.wait_for()
        image.scroll_into_view_if_needed()
        page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0", arg=image.element_handle()
        )
        size = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
        page.screenshot(path=str(tmp_path / "scoreboard.png"), full_page=True)
    finally:
        page.close()
    assert size[0] > 500 and size[1] > 200, size


def _open_custom_run(page, stack, flow: str, deployment: str) -> None:
    """The deployments list → `flow` / `deployment` → Run → Custom run."""
    page.goto(f"{stack.server.ui_url}/deployments")
    row = page.locator("tr", has_text=flow)
    row.locator("a[href^='/deployments/deployment/']", has_text=deployment).click()
    page.wait_for_url("**/deployments/deployment/**")
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Custom run", exact=True).click()
    page.wait_for_url("**/run**")


def _runs_named(stack, run_name: str) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    named = FlowRunFilter(name=FlowRunFilterName(any_=[run_name]))
    return api(stack.env, lambda c: c.read_flow_runs(flow_run_filter=named))


def _submit_and_open_run(page, stack, run_name: str, tries: int = 3) -> str:
    """Submit the form; the UI goes back to the deployment, where the new run is listed: open
    it, and return its id. When the UI's create-flow-run request itself is answered with a 5xx
    (on this loaded machine: the SQLite server busy past its timeout), the UI shows an error
    toast and stays on the form — a user clicks Submit again, and so does this, only while no
    run of that name exists. Any other answer, or none, fails the test."""
    errors: list[str] = []
    for _ in range(tries):
        with page.expect_response(
            lambda r: r.url.endswith("/create_flow_run") and r.request.method == "POST"
        ) as created:
            page.locator("button[type=submit]", has_text="Submit").click()
        response = created.value
        if response.ok:
            page.wait_for_url(lambda url: "/deployments/deployment/" in url and "/run" not in url)
            page.get_by_role("link", name=run_name).first.click()
            page.wait_for_url("**/runs/flow-run/**")
            if errors:
                warnings.warn(f"Submit answered {errors} before it went through", stacklevel=2)
            return page.url.rstrip("/").split("/")[-1].split("?")[0]
        errors.append(f"HTTP {response.status}: {response.text()[:300]}")
        if response.status < 500:
            raise AssertionError(f"the UI's create-flow-run request was refused: {errors[-1]}")
        if _runs_named(stack, run_name):
            raise AssertionError(f"a run was created, yet its request answered {errors[-1]}")
        _close_toasts(page)
    raise AssertionError(f"Submit failed {tries} times: {errors}")


def _close_toasts(page) -> None:
    """Close the toasts on the page (the error toast may lie over the form's buttons)."""
    for close in page.locator(".p-toast__close-btn").all():
        with contextlib.suppress(PlaywrightError):  # gone by itself meanwhile
            close.dispatch_event("click", timeout=2000)  # its countdown ring lies over it
    with contextlib.suppress(PlaywrightError):
        page.locator(".p-toast__card").first.wait_for(state="detached", timeout=10_000)


def _wait_completed(page, stack, tmp_path, timeout: float = RUN_TIMEOUT_S) -> None:
    """Watch the run page until its state badge says Completed (the page updates itself)."""
    deadline = time.monotonic() + timeout
    last_reload = time.monotonic()
    while True:
        state = page.locator(".page-heading .state-badge").first.inner_text().strip()
        if state == "Completed":
            return
        if state in ("Failed", "Crashed", "Cancelled") or time.monotonic() > deadline:
            page.screenshot(path=str(tmp_path / "run.png"))
            tail = stack.worker_log.read_text(errors="replace")[-4000:]
            pytest.fail(f"the run page shows {state!r}\n{tail}")
        if time.monotonic() - last_reload > 30:
            page.reload()
            last_reload = time.monotonic()
        time.sleep(2)


def test_the_short_form_has_few_fields_and_runs(
    prefect_stack, small_form_defaults, browser, tmp_path
):
    """lion-run / gpu-box: the form shows at most 15 top-level fields, every one of the flow's
    parameters; a run started by typing into two of them (name, storage root) completes."""
    stack = prefect_stack
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    run_name = f"ui-form-{secrets.token_hex(4)}"
    root = f"s3://{small_form_defaults['bucket']}/typed"
    try:
        _open_custom_run(page, stack, "lion-run", "gpu-box")
        name_field = _form_field(page, "name (Optional)")
        name_field.wait_for()
        assert name_field.input_value() == "form-defaults"
        labels = [
            " ".join(t.split())
            for t in page.locator(".schema-form-property__label").all_inner_texts()
        ]
        page.screenshot(path=str(tmp_path / "form.png"), full_page=True)
        assert 10 <= len(labels) <= 15, labels
        assert "storage_root (Optional)" in labels and "preset (Optional)" in labels, labels
        assert not any("None" in label for label in labels), labels

        page.locator(".flow-run-name-input input").fill(run_name)
        name_field.fill("ui-form")
        _form_field(page, "storage_root (Optional)").fill(root)
        run_id = _submit_and_open_run(page, stack, run_name)
        _wait_completed(page, stack, tmp_path)
        page.screenshot(path=str(tmp_path / "run.png"))
    except Exception:
        page.screenshot(path=str(tmp_path / "failure.png"))
        raise
    finally:
        page.close()

    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    named = FlowRunFilter(name=FlowRunFilterName(any_=[run_name]))
    (run,) = api(stack.env, lambda c: c.read_flow_runs(flow_run_filter=named))
    assert str(run.id) == run_id and run.state.is_completed()
    assert run.parameters["name"] == "ui-form" and run.parameters["storage_root"] == root
    deployment = api(stack.env, lambda c: c.read_deployment(run.deployment_id))
    assert deployment.name == "gpu-box"
    assert len(deployment.parameter_openapi_schema["properties"]) <= 15
    # Its lion-distill subflow is named for the run (the form's name), its round `round-1`.
    from prefect.client.schemas.filters import FlowRunFilterParentFlowRunId

    def children(parent):
        only = FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent]))
        return api(stack.env, lambda c: c.read_flow_runs(flow_run_filter=only))

    (distill,) = children(run.id)
    assert distill.name == "ui-form" and distill.state.is_completed()
    assert [r.name for r in children(distill.id)] == ["round-1"]
    # The run did the work where the form said: round 1's pools and round 2's committed.
    options = small_form_defaults["options"]
    seeds = pd.read_parquet(f"{root}/round=1/train_pool.parquet", storage_options=options)
    assert len(seeds) == 16
    new = pd.read_parquet(f"{root}/round=2/cache_pool.parquet", storage_options=options)
    assert 0 < len(new) <= 6
