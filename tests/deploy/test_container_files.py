"""The container files describe the production topology (no engine is needed to check that).

Where a Compose implementation is installed, it validates the file too; where a Docker engine
answers, the image is built and its health check run.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def dockerfile():
    # Join continuation lines so that each instruction is one string.
    text = (ROOT / "Dockerfile").read_text()
    return [line for line in re.sub(r"\\\n\s*", " ", text).splitlines() if line.strip()]


def _instructions(dockerfile, name):
    return [line for line in dockerfile if line.split(" ", 1)[0] == name]


def test_the_image_is_a_slim_official_python_and_runs_as_a_non_root_user(dockerfile):
    (base,) = _instructions(dockerfile, "FROM")
    match = re.fullmatch(r"FROM python:3\.(\d+)-slim(-\w+)?", base)
    assert match and int(match.group(1)) >= 11
    users = _instructions(dockerfile, "USER")
    assert users and users[-1] not in ("USER root", "USER 0")


def test_the_image_installs_the_lock_and_collects_static_files_at_build(dockerfile):
    runs = " ".join(_instructions(dockerfile, "RUN"))
    assert "pip install --require-hashes -r requirements.lock" in runs
    # The SMS SDKs and tokenizers are optional extras chosen at build time, each from its own
    # hashed lock.
    assert 'ARG SMS_EXTRAS=""' in dockerfile and 'ARG TOKENIZERS=""' in dockerfile
    assert "-r requirements-tokenizers.lock" in runs
    for extra in ("sms-aliyun", "sms-tencent", "sms-twilio", "tokenizers"):
        assert (ROOT / f"requirements-{extra}.lock").exists()
        assert f"requirements-{extra}.lock" in " ".join(_instructions(dockerfile, "COPY"))
    collect = next(line for line in dockerfile if "collectstatic" in line)
    # Throwaway values for the build step only, never ENV (which would stay in the image).
    assert collect.startswith("RUN ")
    assert "SECRET_KEY=" in collect and "KEY_ENCRYPTION_KEY=" in collect
    assert not any("SECRET" in line for line in _instructions(dockerfile, "ENV"))


def test_the_image_checks_its_health_on_healthz_and_serves_with_uvicorn(dockerfile):
    (health,) = _instructions(dockerfile, "HEALTHCHECK")
    assert "scripts/healthcheck.py" in health
    assert "/healthz" in (ROOT / "scripts/healthcheck.py").read_text()
    (cmd,) = _instructions(dockerfile, "CMD")
    assert "scripts/serve-web.sh" in cmd
    serve = (ROOT / "scripts/serve-web.sh").read_text()
    assert "-m portal.serve" in serve
    for flag in ("--workers", "--loop uvloop", "--no-access-log"):
        assert flag in serve


def test_it_starts_uvicorn_only_through_portal_serve_with_every_limit():
    """A server reachable directly must never run without limits: every launcher goes
    through portal.serve, which passes the limits from settings."""
    from django.conf import settings

    from portal.serve import APPLICATION, PROTOCOL, limit_options

    launchers = ["scripts/run-dev.sh", "scripts/run-prod.sh", "scripts/serve-web.sh"]
    launchers += ["Dockerfile", "compose.yaml", "Makefile"]
    for name in launchers:
        text = (ROOT / name).read_text()
        assert not re.search(r"(^|[\s/\"'])uvicorn[\"']?\s+portal", text, re.M), name
        assert "uvicorn.run(" not in text, name
    options = limit_options(settings)
    pairs = dict(zip(options[::2], options[1::2], strict=True))
    assert pairs["--limit-concurrency"] == str(settings.WEB_LIMIT_CONCURRENCY)
    assert pairs["--timeout-keep-alive"] == str(settings.WEB_KEEP_ALIVE_SECONDS)
    assert pairs["--h11-max-incomplete-event-size"] == str(settings.WEB_MAX_HEADER_BYTES)
    assert pairs["--backlog"] == str(settings.WEB_BACKLOG)
    assert pairs["--http"] == PROTOCOL
    assert APPLICATION == "portal.asgi:application"


def test_the_build_context_leaves_out_secrets_and_local_state():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".env", ".git", ".venv", "var"):
        assert entry in ignored


def test_compose_has_the_whole_topology(compose):
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "web", "worker", "beat", "upstream"} <= set(services)
    web = services["web"]
    assert web["command"][-1] == "scripts/serve-web.sh"
    assert int(re.search(r"\d+", str(web["environment"]["WEB_WORKERS"])).group()) > 1
    assert web["environment"]["PROMETHEUS_MULTIPROC_DIR"]
    assert "worker" in services["worker"]["command"]
    assert "beat" in services["beat"]["command"]


def test_compose_runs_exactly_one_beat(compose):
    beat = compose["services"]["beat"]
    assert beat["deploy"]["replicas"] == 1


def test_compose_migrates_before_anything_serves(compose):
    services = compose["services"]
    assert "migrate" in " ".join(services["migrate"]["command"])
    assert services["migrate"]["restart"] == "no"
    for name in ("web", "worker", "beat"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"


def test_compose_takes_settings_from_env_and_points_at_its_own_database(compose):
    for name in ("migrate", "web", "worker", "beat"):
        service = compose["services"][name]
        assert service["env_file"] == ".env"
        env = service["environment"]
        assert env["DATABASE_URL"].startswith("postgres://")
        assert "@postgres:5432/" in env["DATABASE_URL"]
        assert env["REDIS_URL"] == "redis://redis:6379/0"
        assert env["DEBUG"] == "false"
        assert env["STATIC_ROOT"] == "/app/staticfiles"  # where the build collected them


def test_compose_keeps_the_demo_upstream_optional(compose):
    upstream = compose["services"]["upstream"]
    assert upstream["profiles"] == ["demo"]
    assert "demo_upstream" in upstream["command"]


def test_env_example_documents_the_deployment_variables():
    documented = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M))
    needed = {
        "POSTGRES_PASSWORD",
        "WEB_WORKERS",
        "WORKER_CONCURRENCY",
        "LOG_FORMAT",
        "METRICS_ENABLED",
        "METRICS_TOKEN",
        "METRICS_ALLOWED_IPS",
        "SENTRY_DSN",
        "CELERY_DEFAULT_QUEUE",
        "STATIC_ROOT",
    }
    assert needed <= documented, needed - documented


def test_the_shell_scripts_parse():
    for script in ("scripts/run-prod.sh", "scripts/serve-web.sh", "scripts/run-dev.sh"):
        result = subprocess.run(["bash", "-n", str(ROOT / script)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


def _compose_command():
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_compose_validates_where_compose_is_installed(tmp_path):
    command = _compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    # A project folder of its own: compose reads .env beside the file.
    shutil.copy(ROOT / "compose.yaml", tmp_path / "compose.yaml")
    (tmp_path / ".env").write_text("POSTGRES_PASSWORD=pw\nALLOWED_HOSTS=api.example.com\n")
    result = subprocess.run(
        [*command, "-f", "compose.yaml", "--profile", "demo", "config", "--services"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == {
        "postgres", "redis", "migrate", "web", "worker", "beat", "upstream",
    }  # fmt: skip


def _docker_engine_answers() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


@pytest.mark.slow
def test_the_image_builds_where_a_docker_engine_answers():
    if not _docker_engine_answers():
        pytest.skip("no Docker engine answers here (docker info fails)")
    tag = f"llm-portal-test:{os.getpid()}"
    try:
        build = subprocess.run(
            ["docker", "build", "-t", tag, "."], cwd=ROOT, capture_output=True, text=True,
            timeout=1800,
        )  # fmt: skip
        assert build.returncode == 0, build.stderr[-4000:]
        user = subprocess.run(
            ["docker", "run", "--rm", tag, "id", "-u"], capture_output=True, text=True
        )
        assert user.stdout.strip() not in ("", "0")
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


def test_the_health_check_script_reports_a_refused_connection(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free_port = s.getsockname()[1]
    env = {**os.environ, "PORT": str(free_port), "ALLOWED_HOSTS": ".example.com,*"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts/healthcheck.py")],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 1
    assert "unhealthy" in result.stderr


def test_a_copy_of_env_example_with_secrets_filled_in_passes_the_deploy_check(tmp_path):
    """What README "Deploying" step 1 asks for: empty values in the copy mean the defaults."""
    from cryptography.fernet import Fernet

    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = re.fullmatch(r"([A-Z][A-Z0-9_]*)=(.*)", line)
        if match:
            env[match.group(1)] = match.group(2)
    env.update(
        DEBUG="false",
        SECRET_KEY="deploy-check-" + "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGH",
        KEY_ENCRYPTION_KEY=Fernet.generate_key().decode(),
        API_KEY_HMAC_SECRET="0123456789abcdefghijklmnopqrstuvwxyz",
        VAR_DIR=str(tmp_path),
        DJANGO_SETTINGS_MODULE="portal.settings",
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "ERROR"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    # Development-only choices are named (SQLite, no Redis), but only as warnings.
    assert "portal.W001" in result.stderr


def _build_context_files() -> list[Path]:
    """The files `docker build .` sends, per .dockerignore (the patterns this file uses)."""
    import fnmatch

    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), line.lstrip("!").removeprefix("**/")))

    def ignored(relative: str) -> bool:
        verdict = False
        for negate, pattern in rules:
            parts = relative.split("/")
            prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
            hit = any(fnmatch.fnmatch(p, pattern) for p in prefixes) or any(
                fnmatch.fnmatch(part, pattern) for part in parts
            )
            if hit:
                verdict = not negate
        return verdict

    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return [ROOT / name for name in listed if not ignored(name) and (ROOT / name).is_file()]


@pytest.mark.slow
def test_the_build_context_alone_collects_static_files_and_loads_the_app(tmp_path):
    """What the image's build step runs, on a copy of exactly what the build context sends."""
    context = tmp_path / "context"
    for source in _build_context_files():
        target = context / source.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    assert not (context / "tests").exists()
    assert not (context / ".env").exists()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    # The Dockerfile's ENV and its collectstatic step's throwaway values.
    env.update(
        DJANGO_SETTINGS_MODULE="portal.settings",
        DEBUG="false",
        VAR_DIR=str(tmp_path / "build-var"),
        STATIC_ROOT=str(tmp_path / "staticfiles"),
        SECRET_KEY="build-only-not-used-at-run-time",
        KEY_ENCRYPTION_KEY="build-only-not-used-at-run-time",
        API_KEY_HMAC_SECRET="build-only-not-used-at-run-time",
        ALLOWED_HOSTS="build.invalid",
    )
    collect = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"],
        cwd=context, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert collect.returncode == 0, collect.stderr[-3000:]
    assert (tmp_path / "staticfiles" / "staticfiles.json").exists()
    load = subprocess.run(
        [sys.executable, "-c", "import portal.asgi, django.urls; django.urls.resolve('/healthz')"],
        cwd=context, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert load.returncode == 0, load.stderr[-3000:]


def test_the_reverse_proxy_example_streams_unbuffered_with_timeouts():
    conf = (ROOT / "deploy/nginx.conf").read_text()
    streams = conf[conf.index("location ~ ^/(openai|anthropic)") :]
    streams = streams[: streams.index("}")]
    for directive in ("proxy_buffering off", "proxy_request_buffering off", "proxy_read_timeout"):
        assert directive in streams
    for directive in ("client_header_timeout", "client_body_timeout", "client_max_body_size"):
        assert directive in conf
    assert "deploy/nginx.conf" in (ROOT / "README.md").read_text()
