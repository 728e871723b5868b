"""The production infrastructure files, checked with real validators (docs/infra-validation.md).

- infra/Dockerfile: hadolint (with ShellCheck inside) and the image's contract with the pools;
- infra/compose.yaml: Docker Compose's own `config` (schema + interpolation) and the compose-spec
  JSON schema (check-jsonschema's vendored copy);
- infra/k8s/*.yaml and the Job a kubernetes worker renders from infra/work-pools/kubernetes.json:
  the Kubernetes OpenAPI schemas in strict mode (kubernetes-validate);
- infra/work-pools/*.json and deployments/prefect.yaml: a real `prefect server` (SQLite), the
  pools created with `prefect work-pool create`, the deployments with `prefect deploy`, flow runs
  created through the API, and their job configurations resolved exactly as the workers do.

No validator is optional: a missing one fails the test with the command that installs it.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect_services import (
    CPU_POOL_NAMES,
    INSTALL_HINT,
    POOL_NAMES,
    POOL_TEMPLATES,
    create_pool,
    prefect_server,
)
from prefect_services import api as _api
from prefect_services import prefect as _prefect
from prefect_services import tool as _tool

REPO = Path(__file__).resolve().parent.parent
INFRA = REPO / "infra"
DOCKERFILE = INFRA / "Dockerfile"
COMPOSE = INFRA / "compose.yaml"
ENV_EXAMPLE = INFRA / ".env.example"
K8S_DIR = INFRA / "k8s"
PREFECT_YAML = REPO / "deployments/prefect.yaml"
K8S_VERSIONS = ("1.30", "1.37")  # oldest and newest Kubernetes minor the manifests are checked for
TEST_IMAGE = "registry.example.org/lion-distill:0.1.0-test"
FAKE_KEY = "sk-lion-infra-test-0123456789abcdef"  # recognisable, never a real key

# Prefect's kubernetes worker insists on these two Job fields inside the *pod* spec (see
# prefect_kubernetes.worker._get_base_job_manifest); Kubernetes ignores them there with a
# warning. They are the only unknown fields allowed in the rendered Job.
PREFECT_REQUIRED_POD_SPEC_EXTRAS = ("parallelism", "completions")


def _import(module: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:
        pytest.fail(f"validator module {module!r} cannot be imported ({exc}): {INSTALL_HINT}")


def _run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kwargs)


# --------------------------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------------------------


def _hadolint(path: Path) -> list[dict[str, Any]]:
    proc = _run([_tool("hadolint"), "--format", "json", "--no-color", str(path)])
    try:
        return json.loads(proc.stdout or "[]")
    except json.JSONDecodeError:
        pytest.fail(f"hadolint gave no JSON (rc {proc.returncode}): {proc.stdout}{proc.stderr}")


def test_dockerfile_passes_hadolint_with_no_finding_at_any_level():
    findings = _hadolint(DOCKERFILE)
    assert findings == [], "\n".join(
        f"line {f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings
    )


def test_hadolint_reports_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get update && apt-get install curl\nCMD bash\n")
    codes = {f["code"] for f in _hadolint(bad)}
    assert {"DL3007", "DL3008", "DL3015"} <= codes, codes


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    joined, out = "", []
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") and not joined:
            continue
        joined += line.rstrip("\\") + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            if joined.strip():
                word, _, rest = joined.strip().partition(" ")
                out.append((word.upper(), rest.strip()))
            joined = ""
    return out


def test_dockerfile_contract_with_the_pools_and_deployments():
    instr = _dockerfile_instructions()
    args = dict(a.split("=", 1) for kind, a in instr if kind == "ARG" and "=" in a and " " not in a)
    assert args["CUDA_IMAGE"].startswith("nvidia/cuda:13.0"), "torch 2.13 wheels are CUDA 13.0"
    assert "devel" in args["CUDA_IMAGE"], "DeepSpeed compiles its ops with nvcc"
    assert [a for k, a in instr if k == "FROM"] == ["${CUDA_IMAGE}"]
    # Non-root, numeric (Kubernetes' runAsNonRoot can check it), the uid the k8s pool runs as.
    uid = int(args["LION_UID"])
    assert uid != 0
    assert [a for k, a in instr if k == "USER"] == ["${LION_UID}:${LION_UID}"]
    pod = json.loads(POOL_TEMPLATES["kubernetes"].read_text())["job_configuration"]["job_manifest"]
    ctx = pod["spec"]["template"]["spec"]["securityContext"]
    assert ctx["runAsUser"] == uid and ctx["runAsNonRoot"] is True
    # tini execs the worker command, or the `prefect flow-run execute` args of a k8s job.
    assert [a for k, a in instr if k == "ENTRYPOINT"] == ['["/usr/bin/tini", "--"]']
    # The code lives where the deployments' pull steps go.
    env = " ".join(a for k, a in instr if k == "ENV")
    assert "LION_HOME=/opt/lion" in env and "PREFECT_SERVER_ANALYTICS_ENABLED=false" in env
    k8s = next(
        d for d in yaml.safe_load(PREFECT_YAML.read_text())["deployments"] if d["name"] == "k8s"
    )
    assert (
        k8s["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"]
        == "/opt/lion"
    )
    # What it copies and installs exists: the k8s extra, the pool template the worker reads.
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert any(d.startswith("prefect-kubernetes") for d in project["optional-dependencies"]["k8s"])
    for kind, a in instr:
        if kind == "COPY":
            *sources, _ = a.split()
            for src in sources:
                assert (REPO / src).exists(), f"COPY source {src} missing"


def test_dockerignore_keeps_local_and_secret_files_out_of_the_image():
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "lion-runs", "**/.env"} <= ignored
    assert "!infra/.env.example" in ignored


# --------------------------------------------------------------------------------------------
# compose.yaml
# --------------------------------------------------------------------------------------------


def _compose_env(**extra: str) -> dict[str, str]:
    """The test's environment without any variable compose.yaml interpolates."""
    names = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE.read_text()))
    env = {k: v for k, v in os.environ.items() if k not in names and not k.startswith("COMPOSE_")}
    env.update(extra)
    return env


def _compose_config(env_file: Path) -> subprocess.CompletedProcess[str]:
    cmd = [_tool("docker-compose"), "-f", str(COMPOSE), "--env-file", str(env_file)]
    return _run([*cmd, "config", "--format", "json"], env=_compose_env())


def test_compose_file_passes_docker_compose_config():
    proc = _compose_config(ENV_EXAMPLE)
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads(proc.stdout)
    services = cfg["services"]
    assert set(services) == {"postgres", "server", "minio", "minio-init", "worker", "cpu-worker"}

    server, worker = services["server"], services["worker"]
    assert server["environment"]["PREFECT_SERVER_DATABASE_DRIVER"] == "postgresql+asyncpg"
    assert server["environment"]["PREFECT_SERVER_DATABASE_HOST"] == "postgres"
    for svc in (server, worker):
        assert svc["environment"]["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
        assert svc["image"] == "lion-distill:0.1.0"
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert worker["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert worker["environment"]["PREFECT_API_URL"] == "http://server:4200/api"
    assert worker["environment"]["AWS_ENDPOINT_URL_S3"] == "http://minio:9000"
    (gpus,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert gpus["driver"] == "nvidia" and gpus["capabilities"] == ["gpu"]
    # The worker creates its pool from the project's template, which the image carries.
    cmd = worker["command"]
    assert cmd[cmd.index("--pool") + 1] == POOL_NAMES["process"]
    assert cmd[cmd.index("--type") + 1] == "process"
    template = cmd[cmd.index("--base-job-template") + 1]
    assert template == "/opt/lion/" + str(POOL_TEMPLATES["process"].relative_to(REPO))
    # Beside it, the CPU pool's worker of the split: same image, template and credentials, no GPU.
    cpu = services["cpu-worker"]
    cmd = cpu["command"]
    assert cmd[cmd.index("--pool") + 1] == CPU_POOL_NAMES["process"]
    assert cmd[cmd.index("--base-job-template") + 1] == template
    assert cpu["image"] == worker["image"] and "deploy" not in cpu
    assert cpu["environment"]["CUDA_VISIBLE_DEVICES"] == ""
    for name in ("PREFECT_API_URL", "AWS_ACCESS_KEY_ID", "AWS_ENDPOINT_URL_S3", "OPENAI_API_KEY"):
        assert cpu["environment"][name] == worker["environment"][name], name
    # Build context and Dockerfile exist (compose config does not check them).
    build = worker["build"]
    assert Path(build["context"]) == REPO and (REPO / build["dockerfile"]) == DOCKERFILE
    assert "mc mb --ignore-existing" in " ".join(services["minio-init"]["entrypoint"])
    # Published ports stay on loopback.
    for svc in services.values():
        for port in svc.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", port


def test_compose_refuses_to_start_without_the_secrets(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    proc = _compose_config(empty)
    assert proc.returncode != 0
    for name in (
        "POSTGRES_PASSWORD",
        "PREFECT_AUTH_STRING",
        "MINIO_ROOT_PASSWORD",
        "LION_S3_SECRET_KEY",
    ):
        assert name in proc.stderr, proc.stderr


def test_compose_file_matches_the_compose_spec_schema(tmp_path):
    check = _tool("check-jsonschema")
    ok = _run([check, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # The schema is strict: a misspelt key fails.
    bad = yaml.safe_load(COMPOSE.read_text())
    bad["services"]["worker"]["shm-size"] = bad["services"]["worker"].pop("shm_size")
    (tmp_path / "compose.yaml").write_text(yaml.safe_dump(bad))
    fail = _run([check, "--builtin-schema", "vendor.compose-spec", str(tmp_path / "compose.yaml")])
    assert fail.returncode != 0 and "shm-size" in fail.stdout + fail.stderr


def test_env_example_covers_every_variable_and_holds_no_secret():
    env = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", COMPOSE.read_text()))
    assert required <= set(env), required - set(env)
    for name, value in env.items():
        if re.search(r"PASSWORD|SECRET|AUTH|KEY|TOKEN", name) and name != "LION_S3_ACCESS_KEY":
            assert value == "" or "change-me" in value, f"{name} must be a placeholder"


def test_no_secret_is_written_in_the_deployment_files():
    patterns = [r"sk-[A-Za-z0-9_-]{20,}", r"AKIA[0-9A-Z]{16}", r"-----BEGIN [A-Z ]*PRIVATE KEY"]
    files = [*INFRA.rglob("*"), PREFECT_YAML, REPO / ".dockerignore"]
    # infra/deepspeed is another part's; infra/.env is the operator's own, never committed.
    files = [f for f in files if f.is_file() and "deepspeed" not in f.parts and f.name != ".env"]
    for f in files:
        text = f.read_text()
        for pattern in patterns:
            assert not re.search(pattern, text), f"{f}: looks like a secret ({pattern})"


# --------------------------------------------------------------------------------------------
# Kubernetes manifests
# --------------------------------------------------------------------------------------------


def _k8s_validate(resource: dict[str, Any], version: str) -> None:
    kv = _import("kubernetes_validate")
    try:
        kv.validate(resource, version, strict=True)
    except kv.utils.SchemaNotFoundError as exc:  # never a silent pass
        pytest.fail(f"no schema for {resource.get('kind')}: {exc}")
    except kv.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        pytest.fail(
            f"{resource['kind']}/{resource['metadata'].get('name')} @ {where}: {exc.message}"
        )


def _k8s_resources() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_manifests_match_the_kubernetes_schemas_strictly(version):
    resources = _k8s_resources()
    kinds = sorted(r["kind"] for r in resources)
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "Deployment",
        "Namespace",
        "Role",
        "RoleBinding",
        "ServiceAccount",
    ]
    for resource in resources:
        _k8s_validate(resource, version)


def test_k8s_schema_validation_rejects_an_unknown_field():
    kv = _import("kubernetes_validate")
    deployment = next(r for r in _k8s_resources() if r["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kv.ValidationError, match="imagePullPolicyy"):
        kv.validate(deployment, K8S_VERSIONS[-1], strict=True)


def test_k8s_worker_matches_the_pool_and_its_rbac():
    res = {(r["kind"], r["metadata"]["name"]): r for r in _k8s_resources()}
    template = json.loads(POOL_TEMPLATES["kubernetes"].read_text())
    namespace = template["variables"]["properties"]["namespace"]["default"]
    assert all(r["metadata"].get("namespace", namespace) == namespace for r in res.values())
    assert ("Namespace", namespace) in res

    pod = res["Deployment", "lion-worker"]["spec"]["template"]["spec"]
    (worker,) = pod["containers"]
    args = worker["args"]
    assert args[:3] == ["prefect", "worker", "start"]
    assert args[args.index("--pool") + 1] == POOL_NAMES["kubernetes"]
    assert args[args.index("--type") + 1] == "kubernetes"
    assert "--no-create-pool-if-not-found" in args  # the pool comes from our template only
    assert pod["serviceAccountName"] == "lion-worker"
    config = res["ConfigMap", "lion-worker"]["data"]
    assert config["PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES"] == namespace
    assert config["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert "nvidia.com/gpu" not in json.dumps(pod)  # the worker itself needs no GPU

    # The CPU pool's worker (the split): the same worker on the other pool; each watches its own.
    cpu_pod = res["Deployment", "lion-cpu-worker"]["spec"]["template"]["spec"]
    (cpu,) = cpu_pod["containers"]
    assert cpu["image"] == worker["image"]
    cpu_args = cpu["args"]
    assert cpu_args[cpu_args.index("--pool") + 1] == CPU_POOL_NAMES["kubernetes"]
    assert cpu_args[:3] == args[:3] and "--no-create-pool-if-not-found" in cpu_args
    assert cpu_pod["serviceAccountName"] == "lion-worker"
    assert cpu["envFrom"] == worker["envFrom"]
    for container, pool in (
        (worker, POOL_NAMES["kubernetes"]),
        (cpu, CPU_POOL_NAMES["kubernetes"]),
    ):
        env = {e["name"]: e.get("value") for e in container["env"]}
        flt = env["PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_ADDITIONAL_LABEL_FILTERS"]
        assert flt == f"prefect.io/work-pool-name={pool}"

    rules = res["Role", "lion-worker"]["rules"]
    job_rule = next(r for r in rules if "jobs" in r["resources"])
    assert {"create", "watch", "delete"} <= set(job_rule["verbs"])
    binding = res["RoleBinding", "lion-worker"]
    assert binding["subjects"][0]["name"] == "lion-worker"


# --------------------------------------------------------------------------------------------
# Prefect: work pools, prefect.yaml, deployments and flow runs on a real server
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prefect_env(tmp_path_factory):
    """A `prefect server start` on SQLite and a free loopback port (tests/prefect_services.py);
    yields the CLI environment pointing at it."""
    with prefect_server(tmp_path_factory.mktemp("prefect-home")) as server:
        yield server.env


@pytest.fixture(scope="module")
def pools(prefect_env):
    """The pools, created from the templates with the documented CLI commands: the GPU pools,
    and the split's CPU pools from the same templates."""
    for kind in POOL_TEMPLATES:
        create_pool(prefect_env, kind)
        create_pool(prefect_env, kind, CPU_POOL_NAMES[kind])
    return prefect_env


@pytest.fixture(scope="module")
def deployed(pools):
    """`prefect deploy --all` from deployments/prefect.yaml, LION_IMAGE set, LION_HOME unset."""
    env = dict(pools, LION_IMAGE=TEST_IMAGE)
    env.pop("LION_HOME", None)
    proc = _prefect(env, "deploy", "--all", "--prefect-file", str(PREFECT_YAML.relative_to(REPO)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return pools


def test_pools_hold_the_templates_and_prefect_rejects_broken_ones(pools):
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import PrefectHTTPStatusError

    async def check(client):
        for kind, path in POOL_TEMPLATES.items():
            pool = await client.read_work_pool(POOL_NAMES[kind])
            assert pool.type == kind
            assert pool.base_job_template == json.loads(path.read_text())
        # The server validates templates: a placeholder without a variable, and a default that
        # breaks its own schema, are both refused.
        template = json.loads(POOL_TEMPLATES["kubernetes"].read_text())
        template["variables"]["properties"].pop("gpus")
        with pytest.raises(PrefectHTTPStatusError, match="undeclared variable"):
            await client.create_work_pool(
                WorkPoolCreate(name="bad", type="kubernetes", base_job_template=template)
            )
        template = json.loads(POOL_TEMPLATES["kubernetes"].read_text())
        template["variables"]["properties"]["gpus"]["default"] = "eight"
        with pytest.raises(PrefectHTTPStatusError, match="gpus"):
            await client.create_work_pool(
                WorkPoolCreate(name="bad", type="kubernetes", base_job_template=template)
            )

    _api(pools, check)


def test_prefect_yaml_parses_with_prefects_own_models():
    from prefect.cli.deploy._config import _load_deploy_configs_and_actions
    from prefect.cli.deploy._models import DeploymentConfig, PrefectYamlModel, RawScheduleConfig
    from rich.console import Console

    raw = yaml.safe_load(PREFECT_YAML.read_text())
    model = PrefectYamlModel.model_validate(raw)  # raises on a bad field
    assert len(model.deployments) == len(raw["deployments"])
    # Prefect's models ignore unknown keys; a misspelt key must not pass silently here.
    top = set(PrefectYamlModel.model_fields) | {"prefect-version"}
    assert set(raw) <= top, set(raw) - top
    for d in raw["deployments"]:
        assert set(d) <= set(DeploymentConfig.model_fields), set(d) - set(
            DeploymentConfig.model_fields
        )

    out = io.StringIO()
    configs, actions = _load_deploy_configs_and_actions(PREFECT_YAML, console=Console(file=out))
    assert out.getvalue() == "", out.getvalue()  # the loader prints only problems
    assert actions["build"] == [] and actions["push"] == []
    names = [(c["entrypoint"], c["name"], c["work_pool"]["name"]) for c in configs]
    assert names == [
        ("flows/distill.py:lion_distill", "gpu-box", "lion-gpu"),
        ("flows/form.py:lion_run", "gpu-box", "lion-gpu"),
        ("flows/distill.py:lion_distill", "k8s", "lion-k8s"),
        ("flows/round.py:lion_round", "gpu-box", "lion-gpu"),
        ("flows/distill.py:lion_distill", "cpu-pool", "lion-cpu"),
        ("flows/gpu_stage.py:lion_gpu_stage", "gpu-pool", "lion-gpu"),
        ("flows/distill.py:lion_distill", "k8s-cpu", "lion-k8s-cpu"),
        ("flows/gpu_stage.py:lion_gpu_stage", "k8s", "lion-k8s"),
    ]
    scheduled = 0
    for c in configs:
        for s in c.get("schedules") or []:
            schedule = RawScheduleConfig.model_validate(s)
            assert schedule.cron and schedule.active is False, "schedules start paused"
            scheduled += 1
        assert c["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"]
    assert scheduled >= 1


def test_prefect_yaml_parameters_fit_the_flows_and_lion_config():
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools import validate

    for d in yaml.safe_load(PREFECT_YAML.read_text())["deployments"]:
        flow = load_flow_from_entrypoint(str(REPO / d["entrypoint"]))
        schema = parameter_schema(flow).model_dump_for_openapi()
        validate(d["parameters"], schema, raise_on_error=True, preprocess=True)
        deployment_config(d)


def deployment_config(d: dict):
    """The config a run of deployment `d` gets from its default parameters: LionConfig from
    `config`, or the short form's (`lion-run`) from its fields."""
    from lion_core.config import LionConfig
    from lion_core.config.presets import form_config

    params = dict(d["parameters"])
    if d["entrypoint"] == "flows/form.py:lion_run":
        endpoints = {
            role: (params.pop(f"{role}_base_url", ""), params.pop(f"{role}_model", ""))
            for role in ("teacher", "referee", "generator")
        }
        return form_config(**params, endpoints=endpoints)
    return LionConfig.from_dict(params["config"], source=f"{d['name']} parameters")


def test_deployment_defaults_are_coherent():
    """A run started with a deployment's defaults trains a sensible student: no coherence
    warning (a tiny student never gets a 7B student's learning rate), whatever the flow. The
    GPU-stage deployments are skipped: their runs always carry the parent's whole config."""
    from lion_core.ops.preflight import coherence_warnings

    checked = []
    for d in yaml.safe_load(PREFECT_YAML.read_text())["deployments"]:
        if d["entrypoint"].startswith("flows/gpu_stage.py"):
            continue
        cfg = deployment_config(d)
        assert coherence_warnings(cfg) == [], (d["name"], d["entrypoint"])
        if cfg.student.tiny is not None:
            assert cfg.training.learning_rate >= 1e-4, d["name"]
        checked.append(d["entrypoint"])
    assert "flows/form.py:lion_run" in checked and len(checked) >= 5


def test_prefect_deploy_creates_the_deployments(deployed):
    async def check(client):
        deployments = {
            (await client.read_flow(d.flow_id)).name + "/" + d.name: d
            for d in await client.read_deployments()
        }
        assert set(deployments) == {
            "lion-distill/gpu-box",
            "lion-run/gpu-box",
            "lion-distill/k8s",
            "lion-round/gpu-box",
            "lion-distill/cpu-pool",
            "lion-gpu-stage/gpu-pool",
            "lion-distill/k8s-cpu",
            "lion-gpu-stage/k8s",
        }
        k8s = deployments["lion-distill/k8s"]
        assert k8s.work_pool_name == POOL_NAMES["kubernetes"]
        assert k8s.job_variables["image"] == TEST_IMAGE and k8s.job_variables["gpus"] == 8
        assert k8s.enforce_parameter_schema
        assert "config" in k8s.parameter_openapi_schema["properties"]
        box = deployments["lion-distill/gpu-box"]
        assert box.work_pool_name == POOL_NAMES["process"]
        # LION_HOME was unset at deploy time: the placeholder stays for the worker to resolve.
        step = box.pull_steps[0]["prefect.deployments.steps.set_working_directory"]
        assert step["directory"] == "{{ $LION_HOME }}"
        for d in deployments.values():
            assert all(not s.active for s in d.schedules), "schedules start paused"
        assert any(d.schedules for d in deployments.values())

    _api(deployed, check)


def _deployment_id(client, name: str):
    async def find():
        return (await client.read_deployment_by_name(name)).id

    return find()


def test_kubernetes_flow_run_renders_a_valid_gpu_job(deployed, monkeypatch):
    kv = _import("kubernetes_validate")
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)  # in the worker's env: must not reach the Job

    async def render(client):
        dep_id = await _deployment_id(client, "lion-distill/k8s")
        run = await client.create_flow_run_from_deployment(
            dep_id, job_variables={"gpus": 2, "node_selector": {"gpu": "h100"}}
        )
        pool = await client.read_work_pool(POOL_NAMES["kubernetes"])
        cfg = await KubernetesWorkerJobConfiguration.resolve_for_flow_run(
            run, client=client, work_pool=pool, worker_name="infra-test"
        )
        return cfg, run, await client.read_deployment(dep_id)

    cfg, run, deployment = _api(deployed, render)
    job = cfg.job_manifest
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert job["metadata"]["namespace"] == "lion"
    assert container["image"] == TEST_IMAGE
    assert container["args"] == ["prefect", "flow-run", "execute"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container["envFrom"] == [{"secretRef": {"name": "lion-credentials", "optional": False}}]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert pod["nodeSelector"] == {"gpu": "h100"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PREFECT__FLOW_RUN_ID"] == str(run.id)
    assert env["PREFECT_API_URL"] == deployed["PREFECT_API_URL"]
    rendered = json.dumps(job)
    assert FAKE_KEY not in rendered and "AWS_SECRET_ACCESS_KEY" not in rendered
    assert FAKE_KEY not in deployment.model_dump_json() + run.model_dump_json()

    # The Job as the worker would send it, against the Kubernetes schemas: as is (non-strict),
    # and strictly once Prefect's two mandatory pod-spec extras are taken out.
    for version in K8S_VERSIONS:
        kv.validate(job, version, strict=False)
    assert all(pod[k] == 1 for k in PREFECT_REQUIRED_POD_SPEC_EXTRAS)
    strict = json.loads(rendered)
    for key in PREFECT_REQUIRED_POD_SPEC_EXTRAS:
        strict["spec"]["template"]["spec"].pop(key)
    strict["metadata"]["name"] = "lion-job"  # the API server fills it in from generateName
    for version in K8S_VERSIONS:
        _k8s_validate(strict, version)


def test_process_flow_run_gets_the_requested_gpus(deployed):
    from prefect.workers.process import ProcessJobConfiguration

    async def render(client, job_variables):
        dep_id = await _deployment_id(client, "lion-distill/gpu-box")
        run = await client.create_flow_run_from_deployment(dep_id, job_variables=job_variables)
        pool = await client.read_work_pool(POOL_NAMES["process"])
        return await ProcessJobConfiguration.resolve_for_flow_run(
            run, client=client, work_pool=pool, worker_name="infra-test"
        )

    chosen = _api(deployed, lambda c: render(c, {"cuda_visible_devices": "0,1"}))
    assert chosen.env["CUDA_VISIBLE_DEVICES"] == "0,1"
    default = _api(deployed, lambda c: render(c, {}))
    assert default.env.get("CUDA_VISIBLE_DEVICES") == os.environ.get("CUDA_VISIBLE_DEVICES")


def test_server_rejects_job_variables_that_break_the_pool_schema(deployed):
    from prefect.exceptions import PrefectHTTPStatusError

    async def check(client):
        dep_id = await _deployment_id(client, "lion-distill/k8s")
        with pytest.raises(PrefectHTTPStatusError, match="gpus"):
            await client.create_flow_run_from_deployment(dep_id, job_variables={"gpus": "two"})
        box = await _deployment_id(client, "lion-distill/gpu-box")
        # Parameters are checked against LionConfig's schema (enforce_parameter_schema).
        with pytest.raises(PrefectHTTPStatusError, match=r"config\.rounds"):
            await client.create_flow_run_from_deployment(box, parameters={"config": {"rounds": 0}})
        with pytest.raises(PrefectHTTPStatusError, match="cuda_visible_devices"):
            await client.create_flow_run_from_deployment(
                box, job_variables={"cuda_visible_devices": "all"}
            )
        # An image placeholder left unresolved (LION_IMAGE unset at deploy time) is refused.
        flow = await client.read_flow_by_name("lion-distill")
        with pytest.raises(PrefectHTTPStatusError, match="image"):
            await client.create_deployment(
                flow_id=flow.id,
                name="unresolved-image",
                work_pool_name=POOL_NAMES["kubernetes"],
                job_variables={"image": "{{ $LION_IMAGE }}"},
            )

    _api(deployed, check)


def test_split_parents_name_gpu_stage_deployments_on_gpu_pools():
    """Each split parent (placement.gpu_deployment set) runs on a CPU pool and names a
    deployment of this file that runs lion_gpu_stage on the matching GPU pool."""
    deployments = yaml.safe_load(PREFECT_YAML.read_text())["deployments"]
    # The flows are named like their functions: lion_gpu_stage -> lion-gpu-stage.
    by_name = {
        f"{d['entrypoint'].rsplit(':', 1)[1].replace('_', '-')}/{d['name']}": d for d in deployments
    }
    parents = {
        name: d
        for name, d in by_name.items()
        if d["parameters"].get("config", {}).get("placement", {}).get("gpu_deployment")
    }
    assert set(parents) == {"lion-distill/cpu-pool", "lion-distill/k8s-cpu"}
    gpu_pools = {CPU_POOL_NAMES[k]: POOL_NAMES[k] for k in CPU_POOL_NAMES}
    for name, parent in parents.items():
        child = by_name[parent["parameters"]["config"]["placement"]["gpu_deployment"]]
        assert child["entrypoint"] == "flows/gpu_stage.py:lion_gpu_stage", name
        assert child["work_pool"]["name"] == gpu_pools[parent["work_pool"]["name"]], name
        assert parent["pull"] == child["pull"], "both find the code in the same place"


def test_kubernetes_split_parent_renders_a_job_without_gpus(deployed):
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    async def render(client):
        dep_id = await _deployment_id(client, "lion-distill/k8s-cpu")
        run = await client.create_flow_run_from_deployment(dep_id)
        pool = await client.read_work_pool(CPU_POOL_NAMES["kubernetes"])
        assert pool.base_job_template == json.loads(POOL_TEMPLATES["kubernetes"].read_text())
        return await KubernetesWorkerJobConfiguration.resolve_for_flow_run(
            run, client=client, work_pool=pool, worker_name="infra-test"
        )

    job = _api(deployed, render).job_manifest
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 0
    assert pod["tolerations"] == [] and pod["nodeSelector"] == {}
    assert container["image"] == TEST_IMAGE
    strict = json.loads(json.dumps(job))
    for key in PREFECT_REQUIRED_POD_SPEC_EXTRAS:
        strict["spec"]["template"]["spec"].pop(key)
    strict["metadata"]["name"] = "lion-job"
    for version in K8S_VERSIONS:
        _k8s_validate(strict, version)
