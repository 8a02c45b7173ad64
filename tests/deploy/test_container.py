"""The Dockerfile: hadolint-clean; one base image argument for both stages,
which a release pins by digest; the dependencies installed from
requirements.lock with their hashes; and the wheel it installs is the one
``pip wheel .`` builds from the repository root.

There is no container engine here, so the build itself is simulated: the
files the builder stage COPYs (through .dockerignore) go into a directory laid
out like its WORKDIR, and the same ``pip wheel`` runs there and at the root.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath

import pytest
import yaml

from deploy.helpers import CHART, OPERATIONS, ROOT, run

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
LOCK = "requirements.lock"

#: The base image: python:3.11-slim, pinned by a release to the digest of its index.
BASE_IMAGE = re.compile(r"python:3\.11-slim(?:@sha256:[0-9a-f]{64})?")
#: A digest for the tests only: the form a release passes, not a real image.
SOME_DIGEST = "sha256:" + "0123456789abcdef" * 4


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, instruction: str) -> list[str]:
        return [arg for ins, arg in self.instructions if ins == instruction]


def parse_dockerfile(text: str, build_args: Mapping[str, str] | None = None) -> list[Stage]:
    """Stages with their instructions; continuations joined, ARGs before FROM
    resolved (``build_args`` overriding their defaults, as ``--build-arg`` does)."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        instruction, _, argument = line.partition(" ")
        instruction, argument = instruction.upper(), argument.strip()
        if instruction == "FROM":
            parts = argument.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], parts[0])
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif not stages and instruction == "ARG":
            key, _, default = argument.partition("=")
            global_args[key] = (build_args or {}).get(key, default)
        else:
            stages[-1].instructions.append((instruction, argument))
    return stages


def dockerignore_admits(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or a parent decides."""

    def matches(pattern: str, candidate: str) -> bool:
        regex = re.escape(pattern.strip("/"))
        regex = regex.replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        return re.fullmatch(regex, candidate) is not None

    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    admitted = True
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern[1:] if negated else pattern
        if any(matches(body, prefix) for prefix in prefixes):
            admitted = negated
    return admitted


def _dockerignore() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _project() -> dict[str, str]:
    project: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project


def _stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


# --- lint and the runtime image ------------------------------------------------------


def test_hadolint_is_clean(hadolint: Path) -> None:
    run([hadolint, "--no-color", DOCKERFILE])


def test_runtime_image() -> None:
    stages = _stages()
    assert [s.name for s in stages] == ["builder", None]
    runtime = stages[-1]
    assert BASE_IMAGE.fullmatch(runtime.base), runtime.base
    assert json.loads(runtime.all("ENTRYPOINT")[-1]) == ["xpander-bridge"]
    assert json.loads(runtime.all("CMD")[-1]) == ["run"]
    assert not any(s.all("HEALTHCHECK") for s in stages), "Kubernetes probes do that"

    # A fixed non-root UID, the one the chart's securityContext runs as.
    uid, _, gid = runtime.all("USER")[-1].partition(":")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert int(uid) == values["podSecurityContext"]["runAsUser"] != 0
    assert int(gid) == values["podSecurityContext"]["runAsGroup"]

    # The port the chart probes by default.
    assert runtime.all("EXPOSE") == [str(values["config"]["http"]["port"])]

    labels = " ".join(runtime.all("LABEL"))
    for key in ("title", "description", "version", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels
    [version_arg] = [a for a in runtime.all("ARG") if a.startswith("VERSION=")]
    assert version_arg == f"VERSION={_project()['version']}"
    assert runtime.all("COPY") == ["--from=builder /opt/venv /opt/venv"]


# --- the base image, pinned by a release -------------------------------------------


def test_both_stages_build_on_the_one_base_image_argument() -> None:
    text = DOCKERFILE.read_text()
    instructions = [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    # Declared before the first FROM (only such an ARG can be used in FROM) ...
    first_from = next(i for i, line in enumerate(instructions) if line.upper().startswith("FROM "))
    declared = [line for line in instructions[:first_from] if line.startswith("ARG PYTHON_IMAGE=")]
    assert len(declared) == 1, "one global ARG PYTHON_IMAGE=... before the first FROM"
    default = declared[0].partition("=")[2]
    assert BASE_IMAGE.fullmatch(default), f"PYTHON_IMAGE defaults to {default}"
    # ... and every stage is built on it, so they cannot drift apart.
    froms = [line.split()[1] for line in instructions if line.upper().startswith("FROM ")]
    assert froms == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]

    assert [s.base for s in _stages()] == [default, default]
    pinned = f"python:3.11-slim@{SOME_DIGEST}"
    stages = parse_dockerfile(text, build_args={"PYTHON_IMAGE": pinned})
    assert [s.base for s in stages] == [pinned, pinned]


def test_how_a_release_pins_the_base_image_is_written_down() -> None:
    # No registry is reachable from the tests, so the digest itself cannot be
    # checked here: the steps that get it must at least be where a release
    # looks for them, in the Dockerfile and in docs/OPERATIONS.md.
    for document in (DOCKERFILE, OPERATIONS):
        text = document.read_text()
        assert "docker buildx imagetools inspect python:3.11-slim" in text, document.name
        assert "--build-arg PYTHON_IMAGE=python:3.11-slim@sha256:" in text, document.name


def test_lock_is_for_the_python_of_the_image() -> None:
    # pip-compile resolved the lock for the Python it ran on; the image must run that one.
    minor = re.search(r"python:(\d+\.\d+)", _stages()[0].base)
    assert minor is not None
    header = (ROOT / LOCK).read_text()
    assert f"autogenerated by pip-compile with Python {minor.group(1)}\n" in header


# --- the dependencies, from the lock ------------------------------------------------


def _commands(run_line: str) -> list[list[str]]:
    return [shlex.split(c) for c in run_line.split("&&")]


def test_dependencies_are_installed_from_the_lock_with_hashes() -> None:
    builder = _stages()[0]
    lock_installs = [
        (index, command)
        for index, (ins, arg) in enumerate(builder.instructions)
        if ins == "RUN"
        for command in _commands(arg)
        if command[0].endswith("pip") and command[1] == "install" and "-r" in command
    ]
    assert len(lock_installs) == 1, "one pip install -r of the lock"
    [(index, install)] = lock_installs
    assert install[0] == "/opt/venv/bin/pip"  # the venv the runtime stage copies
    assert install[install.index("-r") + 1] == LOCK
    assert "--require-hashes" in install
    assert "--only-binary=:all:" in install  # no sdist build, whose tools come unhashed

    # The lock reaches the WORKDIR before that RUN (and through .dockerignore).
    copies_before = [arg.split() for ins, arg in builder.instructions[:index] if ins == "COPY"]
    assert [LOCK, "./"] in copies_before
    assert dockerignore_admits(LOCK, _dockerignore())
    assert (ROOT / LOCK).is_file()


# --- the wheel ------------------------------------------------------------------


@dataclass
class WheelBuild:
    build_dir: str  # the directory pip wheel builds, inside the image
    wheel_dir: str  # -w
    install_glob: str  # what the venv installs


def _builder_wheel_build(builder: Stage) -> WheelBuild:
    [run_line] = [r for r in builder.all("RUN") if "pip wheel" in r]
    commands = _commands(run_line)
    [wheel] = [c for c in commands if c[:2] == ["pip", "wheel"]]
    assert "--no-deps" in wheel
    wheel_dir = wheel[wheel.index("-w") + 1]
    positional = [a for a in wheel[2:] if not a.startswith("-") and a != wheel_dir]
    assert positional == ["."], f"pip wheel must build the project root, got {positional}"
    [install] = [c for c in commands if c[0].endswith("pip") and c[1] == "install"]
    # The dependencies came from the lock, hashed: the wheel must not pull more.
    assert install[0] == "/opt/venv/bin/pip"
    assert "--no-deps" in install
    # ...and the lock must have been enough for it.
    assert ["/opt/venv/bin/pip", "check"] in commands[commands.index(install) :]
    [glob] = [a for a in install[2:] if a.endswith(".whl")]
    assert PurePosixPath(glob).parent == PurePosixPath(wheel_dir)
    return WheelBuild(builder.all("WORKDIR")[-1], wheel_dir, PurePosixPath(glob).name)


def _docker_context_copy(builder: Stage, into: Path) -> None:
    """Lay out WORKDIR as the builder's COPY lines (through .dockerignore) would."""
    workdir = PurePosixPath(builder.all("WORKDIR")[-1])
    patterns = _dockerignore()
    for copy in builder.all("COPY"):
        *sources, dest = copy.split()
        assert not any(s.startswith("--") for s in sources), copy
        target = PurePosixPath(dest) if dest.startswith("/") else workdir / dest
        relative = target.relative_to(workdir)
        for source in sources:
            assert dockerignore_admits(source, patterns), f".dockerignore drops {source}"
            origin = ROOT / source
            if origin.is_dir():
                for file in origin.rglob("*"):
                    rel = file.relative_to(ROOT).as_posix()
                    if file.is_file() and dockerignore_admits(rel, patterns):
                        out = into / relative / file.relative_to(origin)
                        out.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(file, out)
            else:
                out = into / relative / origin.name if dest.endswith("/") else into / relative
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, out)


def _pip_wheel(source: Path, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", ".", "-w", str(out)],
        cwd=source,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wheel_files(wheel: Path) -> tuple[set[str], str, str]:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        [metadata] = [n for n in names if n.endswith(".dist-info/METADATA")]
        return names, archive.read(entry_points).decode(), archive.read(metadata).decode()


def test_image_installs_the_wheel_pip_builds_from_the_repo(tmp_path: Path) -> None:
    builder = _stages()[0]
    build = _builder_wheel_build(builder)
    assert build.build_dir == "/src"

    context = tmp_path / "image-src"
    _docker_context_copy(builder, context)
    # Both builds at once (build isolation fetches setuptools from PyPI): seconds.
    from_repo = _pip_wheel(ROOT, tmp_path / "from-repo")
    from_image = _pip_wheel(context, tmp_path / "from-image")
    for name, proc in (("repository root", from_repo), ("image context", from_image)):
        output, _ = proc.communicate(timeout=100)
        if proc.returncode != 0:
            pytest.fail(f"pip wheel in the {name} failed:\n{output}")

    [repo_wheel] = (tmp_path / "from-repo").glob("*.whl")
    [image_wheel] = (tmp_path / "from-image").glob("*.whl")
    project = _project()
    dist = re.sub(r"[-_.]+", "_", project["name"]).lower()
    assert repo_wheel.name == image_wheel.name == f"{dist}-{project['version']}-py3-none-any.whl"
    assert fnmatchcase(image_wheel.name, build.install_glob)

    repo_files, repo_entry_points, repo_metadata = _wheel_files(repo_wheel)
    image_files, image_entry_points, image_metadata = _wheel_files(image_wheel)
    assert "bridge/cli.py" in image_files
    assert "xpander-bridge = bridge.cli:main" in image_entry_points
    assert image_entry_points == repo_entry_points
    assert image_metadata == repo_metadata
    # Every module of the package reaches the image (the repo's in-tree build/
    # may hold stale extras, so the image's set is checked as a subset).
    sources = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "bridge").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix in {".py", ".typed"}
    }
    assert sources <= image_files
    assert image_files <= repo_files


@pytest.mark.parametrize(
    ("path", "admitted"),
    [
        ("pyproject.toml", True),
        ("README.md", True),
        ("requirements.lock", True),
        ("bridge/cli.py", True),
        ("bridge/__pycache__/cli.cpython-311.pyc", False),
        ("tests/test_cli.py", False),
        (".venv/bin/python", False),
        (".tools/bin/helm", False),
        (".git/config", False),
    ],
)
def test_dockerignore_keeps_the_context_small(path: str, admitted: bool) -> None:
    assert dockerignore_admits(path, _dockerignore()) is admitted
