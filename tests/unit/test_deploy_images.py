"""deploy/*.Dockerfile: hadolint-clean, multi-stage, non-root, health-checked, pinned, minimal extras.

Docker cannot run here, so the images are not built; these checks read the files and lint them with the real
hadolint binary.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.support.deploy_files import DEPLOY, DOCKERFILES, REPO, hadolint

#: The default ports (docs/deploy.md) each image exposes.
PORTS = {"gkc": {"50051", "8081"}, "ranker": {"50052", "8082"}, "trainer": set()}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, rest = full.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def final_stage(path: Path) -> list[tuple[str, str]]:
    steps = instructions(path)
    last_from = max(i for i, (kw, _) in enumerate(steps) if kw == "FROM")
    return steps[last_from:]


def torch_pin() -> str:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pins = {dep for dep in extras["ranker"] if dep.startswith("torch")}
    assert len(pins) == 1, pins
    return pins.pop()


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_hadolint_is_clean(name: str) -> None:
    binary = hadolint()
    proc = subprocess.run(
        [binary, "--no-color", "--failure-threshold", "info", str(DOCKERFILES[name])],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """The lint step can fail: an unpinned base and pip without --no-cache-dir are reported."""
    binary = hadolint()
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nCMD python -m http.server\n")
    proc = subprocess.run([binary, "--no-color", str(bad)], capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    assert "DL3007" in proc.stdout  # latest tag
    assert "DL3042" in proc.stdout  # pip cache


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_image_is_multi_stage_non_root_and_pinned(name: str) -> None:
    path = DOCKERFILES[name]
    steps = instructions(path)
    base_arg = next(args for kw, args in steps if kw == "ARG" and args.startswith("PYTHON_IMAGE="))
    base = base_arg.split("=", 1)[1]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base
    froms = [args for kw, args in steps if kw == "FROM"]
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    assert all(f.startswith("${PYTHON_IMAGE}") for f in froms), froms
    last = final_stage(path)
    users = [args for kw, args in last if kw == "USER"]
    assert users, "the runtime stage must drop root"
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert any(kw == "COPY" and args.startswith("--from=build") for kw, args in last), (
        "runtime copies the venv"
    )
    exposed = {port for kw, args in last if kw == "EXPOSE" for port in args.split()}
    assert exposed == PORTS[name]


@pytest.mark.parametrize("name", ["gkc", "ranker"])
def test_service_images_probe_healthz_on_their_port(name: str) -> None:
    checks = [args for kw, args in final_stage(DOCKERFILES[name]) if kw == "HEALTHCHECK"]
    assert len(checks) == 1
    assert "/healthz" in checks[0]
    assert f"{name.upper()}_HTTP_PORT" in checks[0], "the probe follows the port setting"
    assert any(kw == "CMD" and name in args for kw, args in final_stage(DOCKERFILES[name]))


def test_trainer_image_runs_the_job_script_and_has_no_probe() -> None:
    last = final_stage(DOCKERFILES["trainer"])
    assert ("HEALTHCHECK", "NONE") in last, "a batch job: the orchestrator watches its exit code"
    script = DEPLOY / "scripts" / "publish-and-train.sh"
    assert any(kw == "COPY" and "deploy/scripts/publish-and-train.sh" in args for kw, args in last)
    assert script.stat().st_mode & 0o111, "the job script is executable"
    syntax = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True, check=False)
    assert syntax.returncode == 0, syntax.stderr


def test_each_image_installs_only_its_extra() -> None:
    pin = torch_pin()
    for name, path in DOCKERFILES.items():
        text = "\n".join(f"{kw} {args}" for kw, args in instructions(path))
        installs = re.findall(r'pip install --no-cache-dir "/src\[([a-z,]+)\]"', text)
        assert installs == [name], (name, installs)
        if name == "gkc":
            assert "torch" not in text.lower(), "the GKC image ships without torch"
        else:
            assert f'--index-url "${{TORCH_INDEX_URL}}" {pin}' in text, f"{name} pins {pin}"
            assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text


def test_torchrec_is_pinned_alike_and_installed_without_the_cuda_fbgemm() -> None:
    """torchrec's metadata asks for `fbgemm-gpu` (the CUDA build); the venv and the trainer image
    install it with --no-deps beside the CPU build that the [trainer] extra pins at the same version."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "fbgemm-gpu-cpu==1.8.0" in extras["trainer"]
    assert not [dep for dep in extras["trainer"] if dep.lower().startswith(("torchrec", "fbgemm-gpu=="))]
    assert "TORCHREC := torchrec==1.8.0" in (REPO / "Makefile").read_text()
    assert "pip install --no-cache-dir --no-deps torchrec==1.8.0" in DOCKERFILES["trainer"].read_text()


def test_the_gkc_extra_does_not_pull_torch() -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not [dep for dep in extras["gkc"] if dep.lower().startswith(("torch", "keep-recsys"))]


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_copy_sources_exist_in_the_build_context(name: str) -> None:
    for kw, args in instructions(DOCKERFILES[name]):
        if kw != "COPY" or args.startswith("--from"):
            continue
        parts = [p for p in args.split() if not p.startswith("--")]
        for src in parts[:-1]:
            assert (REPO / src).exists(), f"{name}: COPY {src} is not in the repository"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_every_package_is_copied_into_the_build(name: str) -> None:
    """Each image installs the project, so it needs every top-level package pyproject.toml declares
    (``contract/`` was once missing: the images would not have imported)."""
    found = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = {pattern.rstrip("*") for pattern in found["include"]}
    copied = {
        args.split()[0].rstrip("/")
        for kw, args in instructions(DOCKERFILES[name])
        if kw == "COPY" and not args.startswith("--")
    }
    assert packages <= copied, f"{name}: not copied: {sorted(packages - copied)}"
