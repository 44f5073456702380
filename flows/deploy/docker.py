"""The `docker` target: the champion's image, built with BentoML's Dockerfile by docker or podman, pushed.

    lifecycle deploy --target docker     # tagged [deploy.docker.registry/]<deploy.image or bento>:v<version>

The image id, size, build time and registry digest are recorded on the model version.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from flows.deploy.common import Deployed, DeployRefused, Options, image_name


def docker_engine(wanted: str) -> str | None:
    """The engine that builds: `deploy.docker.engine`, or on auto a docker whose daemon answers, else podman."""
    for engine in ("docker", "podman") if wanted == "auto" else (wanted,):
        if shutil.which(engine) and subprocess.run([engine, "info"], capture_output=True, timeout=60).returncode == 0:  # noqa: S603 - an argv list, no shell: our own command
            return engine
    return None


def local_torch_wheel(version: str) -> Path | None:
    """The installed torch's own wheel (`2.13.0+cpu`) where pip finds it on disk (`find-links`), for a Linux image."""
    import platform

    config = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60
    ).stdout
    folders = re.findall(r"find-links='([^']*)'", config) + [os.environ.get("PIP_FIND_LINKS", "")]
    python = f"cp{sys.version_info.major}{sys.version_info.minor}"
    for folder in (f for links in folders for f in links.split()):
        for wheel in sorted(Path(folder).glob(f"torch-{version}-{python}-{python}-*linux*_{platform.machine()}.whl")):
            return wheel
    return None


# Every requirement installs from a wheel: no compiler, no checkout; and no apt key is ever added: no gpg.
NOT_IN_THE_IMAGE = ("build-essential", "git", "gnupg2")
# Requirements of a package that what the bento runs never imports, left out of the image (uv's `--excludes`):
# chromadb's embedded client, given the vectors, needs neither its Kubernetes client (126 MB) nor onnxruntime (78 MB,
# for its default embedding function) — tests/stages/test_integrate.py searches an index with both blocked.
UNUSED = {"chromadb": ("kubernetes", "onnxruntime")}
EXCLUDES = "excludes.txt"  # beside requirements.txt in env/python
HEALTHCHECK = (  # what `docker ps` shows; Kubernetes uses the manifests' probes instead
    'HEALTHCHECK --interval=30s --timeout=5s --start-period=180s CMD python -c "import os, urllib.request; '
    "urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('BENTOML_PORT', '3000') + '/livez', timeout=4)\""
)


def slim_dockerfile(text: str) -> tuple[str, list[str]]:
    """BentoML's Dockerfile without what a production image should not carry: the compilers and git its apt line
    installs, apt's package lists and uv's download cache (a layer of its own otherwise); with a HEALTHCHECK."""
    changes = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "apt-get install" in line:
            kept = [w for w in line.split(" ") if w not in NOT_IN_THE_IMAGE]
            # apt's downloaded packages too: BentoML keeps them for BuildKit's cache mounts, which this build has not
            # (83 MB of .deb files in a layer otherwise).
            clean = " && apt-get clean && rm -rf /var/lib/apt/lists/*"
            lines[i] = " ".join(kept) + ("" if line.rstrip().endswith("\\") else clean)
            changes += [f"without {w} (apt)" for w in NOT_IN_THE_IMAGE if w in line.split(" ")]
        elif line.startswith("ENV UV_NO_PROGRESS="):
            # The requirements' folder is in the image before the install step: uv reads the excludes from there.
            lines[i] = f"{line}\nENV UV_NO_CACHE=1\nENV UV_EXCLUDE=$BENTO_PATH/env/python/{EXCLUDES}"
            changes.append("no uv cache in the image")
        elif line.startswith("ENTRYPOINT "):
            lines[i] = f"{HEALTHCHECK}\n{line}"
    return "\n".join(lines) + "\n", changes


# Where `podman build -v` mounts the folder of the offline torch wheel for the install step: the wheel is read from
# there and lands in no layer (copied into the context, it would be in two: the requirements' and the bento's).
WHEELS_IN_BUILD = "/wheels"


def carries_torch(requirements: list[str]) -> bool:
    return any(re.match(r"torch==", line) for line in requirements)


def image_context(context: Path, docker_params, gpu: bool, mounted_wheels: bool = False) -> list[str]:
    """Edits BentoML's build context for this deploy: a slimmer Dockerfile (`slim_dockerfile`), the base image,
    torch's CPU build in a CPU image that runs torch (PyPI's default torch is the CUDA build, gigabytes the image
    would never use), and the requirements left out (`UNUSED`). Returns what was changed, to print."""
    from importlib.metadata import version

    dockerfile = context / "env" / "docker" / "Dockerfile"
    text, changes = slim_dockerfile(dockerfile.read_text(encoding="utf-8"))
    if docker_params.base_image:
        text, found = re.subn(
            r"^FROM \S+ AS base-container$",
            f"FROM {docker_params.base_image} AS base-container",
            text,
            count=1,
            flags=re.M,
        )
        if not found:  # a BentoML whose Dockerfile names its base otherwise: say so rather than build on another
            raise DeployRefused(
                f"BentoML's Dockerfile has no `FROM … AS base-container` line to set {docker_params.base_image} in"
            )
        changes.append(f"base image {docker_params.base_image}")
    requirements = context / "env" / "python" / "requirements.txt"
    lines = requirements.read_text(encoding="utf-8").splitlines()
    excluded: list[str] = []
    torch = version("torch")
    wheel = None if gpu else local_torch_wheel(torch)
    if not carries_torch(lines):
        changes.append("no torch: nothing this bento serves runs it (the openvino engine, the exported embedder)")
    elif wheel and mounted_wheels:
        lines = [f"{WHEELS_IN_BUILD}/{wheel.name}" if re.match(r"torch==", line) else line for line in lines]
        changes.append(f"torch from {wheel} (mounted into the build, in no layer of the image)")
    elif wheel:
        # The wheel travels in the build context; uv reads a requirement's relative path from the requirements file.
        (requirements.parent / "wheels").mkdir(exist_ok=True)
        shutil.copy(wheel, requirements.parent / "wheels" / wheel.name)
        lines = [f"./wheels/{wheel.name}" if re.match(r"torch==", line) else line for line in lines]
        changes.append(f"torch from {wheel}")
    elif not gpu:
        lines.insert(0, f"--extra-index-url {docker_params.cpu_torch_index}")
        changes.append(f"torch from {docker_params.cpu_torch_index}")
    else:  # PyPI's torch bundles the CUDA runtime: the nodes need the NVIDIA driver and container toolkit only
        changes.append("torch from PyPI (its CUDA build) for a GPU image")
    for name, unused in UNUSED.items():
        if any(line.startswith(f"{name}==") for line in lines):
            excluded += unused
            changes += [f"without {u} (a requirement of {name} that nothing served imports)" for u in unused]
    (requirements.parent / EXCLUDES).write_text("".join(f"{u}\n" for u in excluded), encoding="utf-8")
    requirements.write_text("\n".join(lines) + "\n", encoding="utf-8")
    dockerfile.write_text(text, encoding="utf-8")
    return changes


def deploy(params, bento: str, version, options: Options) -> Deployed:
    """Builds the champion's image with BentoML's Dockerfile (its build context, edited by `image_context`), tags it
    <repository>:v<version>, pushes it where `deploy.docker.registry` says; the image id and digest are recorded."""
    from importlib import metadata

    import bentoml
    from bentoml._internal.container import construct_containerfile

    settings = params.deploy.docker
    engine = docker_engine(settings.engine)
    image = image_name(params, bento, version)
    if engine is None:
        raise DeployRefused(
            f"no container engine answers here ({'docker or podman' if settings.engine == 'auto' else settings.engine}"
            " `info` failed): `make container-engine` installs podman from Debian, or build where one runs, from "
            f"this bento (`bentoml export {bento} bento.bentomodel` here, `bentoml import bento.bentomodel` there):"
            f"\n  bentoml containerize {bento} -t {image}"
        )
    gpu = params.serve.resources.gpu > 0
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}  # BuildKit fetches its Dockerfile frontend from Docker Hub
    # podman (buildah) mounts a host folder into the build's RUN steps; docker's legacy builder cannot.
    requirements = Path(bentoml.get(bento).path) / "env" / "python" / "requirements.txt"
    torch = carries_torch(requirements.read_text(encoding="utf-8").splitlines())
    wheel = None if gpu or engine != "podman" or not torch else local_torch_wheel(metadata.version("torch"))
    volume = ["-v", f"{wheel.parent}:{WHEELS_IN_BUILD}:ro"] if wheel else []
    started = time.monotonic()
    # BentoML's own build context (the bento, its models, the Dockerfile `bentoml containerize` would use).
    with construct_containerfile(bentoml.get(bento), enable_buildkit=False) as (context, dockerfile):
        for change in image_context(Path(context), settings, gpu, mounted_wheels=bool(volume)):
            print(f"  {change}")
        # podman writes OCI images by default, which have no HEALTHCHECK: the docker format keeps it.
        image_format = ["--format", "docker"] if engine == "podman" else []
        build = [engine, "build", *image_format, *volume, "-f", dockerfile, "-t", image, context]
        print("  " + " ".join(build), flush=True)
        if subprocess.run(build, env=env).returncode != 0:  # noqa: S603 - an argv list, no shell: our own command
            raise DeployRefused(f"`{engine} build` failed (its output is above); nothing was tagged {image}")
    built_s = round(time.monotonic() - started, 1)
    inspect = [engine, "image", "inspect", "--format", "{{.Id}} {{.Size}}", image]
    image_id, size = subprocess.run(inspect, capture_output=True, text=True, check=True).stdout.split()  # noqa: S603 - an argv list, no shell: our own command
    detail = {"image": image, "engine": engine, "id": image_id, "size_bytes": int(size), "build_s": built_s}
    if settings.registry:
        try:
            detail["digest"] = push(engine, image, settings.tls_verify)
        except subprocess.CalledProcessError:
            raise DeployRefused(
                f"{image} was built but `{engine} push` to {settings.registry} (`deploy.docker.registry`) failed: its "
                "output is above (a registry on plain HTTP needs `deploy.docker.tls_verify: false`)"
            ) from None
    return Deployed(detail)


def push(engine: str, image: str, tls_verify: bool) -> str:
    """Pushes the image; its digest in the registry (sha256:…), what a deployment pins."""
    import tempfile

    if engine == "podman":
        with tempfile.TemporaryDirectory() as tmp:
            digest_file = Path(tmp) / "digest"
            command = ["podman", "push", f"--tls-verify={str(tls_verify).lower()}", "--digestfile", str(digest_file)]
            subprocess.run([*command, image], check=True)  # noqa: S603 - an argv list, no shell: our own command
            return digest_file.read_text().strip()
    # docker trusts a registry on localhost over plain HTTP; other insecure ones go in the daemon's configuration
    subprocess.run(["docker", "push", image], check=True)  # noqa: S603, S607 - docker from PATH, an argv list, no shell
    digests = subprocess.run(  # noqa: S603 - an argv list, no shell: our own command
        ["docker", "image", "inspect", "--format", '{{join .RepoDigests " "}}', image],  # noqa: S607 - the user's tool from PATH
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    repository = image.rsplit(":", 1)[0]
    return next(d.split("@", 1)[1] for d in digests if d.startswith(repository + "@"))
