"""Flow run names: descriptive for subflows and runs started from Python or the CLI; a run
started from a deployment keeps the name it was started with (the UI's run form, a schedule)."""

from __future__ import annotations

from prefect import flow

from flows.names import descriptive, evaluation_name, round_name, run_name
from lion_core.config import LionConfig


@flow(name="names-toy-round", flow_run_name=descriptive(round_name))
def toy_round(round: int = 1) -> str:
    from prefect.runtime import flow_run

    return flow_run.name


@flow(name="names-toy-run", flow_run_name=descriptive(run_name))
def toy_run(config: LionConfig = LionConfig()) -> list[str]:  # noqa: B008 (a flow parameter)
    from prefect.runtime import flow_run

    return [flow_run.name, toy_round(3)]


def test_names_from_parameters():
    assert round_name({"round": 2}) == "round-2"
    assert evaluation_name({"round": 0}) == "evaluate-round-0"
    assert evaluation_name({"round": None}) == "evaluate-model"
    assert run_name({"config": LionConfig(name="exp-7")}) == "exp-7"
    assert run_name({"config": {"name": "exp-8"}}) == "exp-8"


def test_runs_and_subflows_are_named_for_what_they_do(prefect_harness):
    assert toy_run(LionConfig(name="exp-1")) == ["exp-1", "round-3"]


def test_a_deployment_run_keeps_the_name_it_was_given(prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow

    with get_client(sync_client=True) as client:
        flow_id = client.create_flow(toy_round)
        deployment_id = client.create_deployment(flow_id=flow_id, name="names-test")
        flow_run = client.create_flow_run_from_deployment(
            deployment_id, parameters={"round": 5}, name="typed-in-the-form"
        )
    assert run_flow(toy_round, flow_run=flow_run, parameters={"round": 5}) == "typed-in-the-form"
