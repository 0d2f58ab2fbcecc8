"""`launcher image build | push`: the project's image, through the docker SDK.

`build` builds docker/Dockerfile from this checkout and tags it
`llm-forge:<version>` and `llm-forge:latest` (what compose.yaml runs).
`push` pushes `<repository>:<version>`, where the repository comes from
`--repository`, else $LLM_FORGE_IMAGE_REPO, else the launcher config's
`vast.image` (what the rented host will run). Registry credentials come only
from $DOCKER_USERNAME and $DOCKER_PASSWORD (or the docker CLI's stored login),
never from the command line.
"""

from __future__ import annotations

import os
import subprocess
from importlib.metadata import PackageNotFoundError, metadata, version
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

image_app = typer.Typer(help="Build the project's Docker image and push it to a registry.", no_args_is_help=True,
                        rich_markup_mode=None)
console = Console(stderr=True)

IMAGE_NAME = "llm-forge"
CHECKOUT = Path(__file__).resolve().parent.parent
DOCKERFILE = "docker/Dockerfile"


def project_version() -> str:
    try:
        # Docker tags allow [A-Za-z0-9_.-]: a local version's '+' becomes '-'.
        return version("llm-forge").replace("+", "-")
    except PackageNotFoundError:
        fail("the llm-forge package is not installed; run `pip install -e .` in the checkout")


def fail(message: str, code: int = 2):
    console.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def docker_client():
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as e:
        fail(f"cannot reach the Docker engine ({e.__class__.__name__}); is dockerd running, is DOCKER_HOST right?", 1)
    return client


def parse_build_args(items: list[str]) -> dict[str, str]:
    args = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--build-arg wants KEY=VALUE, got {item!r}")
        args[key] = value
    return args


def default_build_args(context: Path) -> dict[str, str]:
    """The labels' values: version, git revision, source URL (when declared)."""
    args = {"VERSION": project_version()}
    rev = subprocess.run(["git", "-C", str(context), "rev-parse", "HEAD"], capture_output=True, text=True)
    if rev.returncode == 0:
        args["REVISION"] = rev.stdout.strip()
    for url in metadata("llm-forge").get_all("Project-URL") or []:
        label, _, value = url.partition(",")
        if label.strip().lower() in ("source", "repository"):
            args["SOURCE_URL"] = value.strip()
    return args


@image_app.command()
def build(
    build_arg: list[str] = typer.Option(
        [], "--build-arg", metavar="KEY=VALUE", help="KEY=VALUE for the Dockerfile, e.g. BASE_IMAGE=..., TORCH_SPEC=..., TORCH_INDEX_URL=..."
    ),
    tag: list[str] = typer.Option([], "--tag", "-t", metavar="TAG", help="Extra tags besides llm-forge:<version> and :latest."),
    context: Path = typer.Option(CHECKOUT, metavar="DIR", help="The checkout to build (holds docker/Dockerfile)."),
    network: Optional[str] = typer.Option(None, metavar="NETWORK", help="Network for RUN steps, e.g. `host`."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Rebuild every layer."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Print the build's whole output."),
):
    """Build docker/Dockerfile and tag it with the project version."""
    if not (context / DOCKERFILE).is_file():
        fail(f"{context / DOCKERFILE} not found: build from a checkout of the project (--context)")
    ver = project_version()
    tags = [f"{IMAGE_NAME}:{ver}", f"{IMAGE_NAME}:latest", *tag]
    buildargs = {**default_build_args(context), **parse_build_args(build_arg)}
    client = docker_client()
    stream = client.api.build(
        path=str(context), dockerfile=DOCKERFILE, tag=tags[0], buildargs=buildargs, network_mode=network,
        nocache=no_cache, rm=True, forcerm=True, decode=True,
    )
    image_id = show_build(stream, verbose)
    image = client.images.get(image_id)
    for t in tags[1:]:
        image.tag(t)
    console.print(f"[green]built[/green] {image.short_id} as {', '.join(tags)}", highlight=False)


def show_build(stream, verbose: bool) -> str:
    """Follow the build's JSON stream: a bar over the Dockerfile's steps, and
    the step lines; the output's tail when it fails. Returns the image id."""
    image_id, tail = None, []
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  console=console, transient=True) as progress:
        task = progress.add_task("building", total=None)
        for chunk in stream:
            if "error" in chunk:
                progress.stop()
                console.print("\n".join(tail[-25:]), markup=False, highlight=False)
                fail(f"build failed: {chunk['error'].strip()}", 1)
            if "aux" in chunk and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
            text = chunk.get("stream", "")
            for line in text.splitlines():
                tail = (tail + [line])[-50:]
                # Legacy builder: "Step 3/17 : RUN ..."; BuildKit-less engines all speak it.
                if line.startswith("Step ") and "/" in line.split(" : ")[0]:
                    done, total = line.split(" : ")[0][5:].split("/")
                    progress.update(task, completed=int(done) - 1, total=int(total),
                                    description=line[:80])
                    progress.console.print(line, markup=False, highlight=False)
                elif verbose:
                    progress.console.print(line, markup=False, highlight=False)
        progress.update(task, completed=progress.tasks[0].total or 0)
    if image_id is None:
        fail("the build ended without an image id", 1)
    return image_id


def push_repository(repository: Optional[str], config: Optional[Path]) -> str:
    if repository:
        return repository
    if os.environ.get("LLM_FORGE_IMAGE_REPO"):
        return os.environ["LLM_FORGE_IMAGE_REPO"]
    from docker.utils import parse_repository_tag

    from launcher.config import load_launcher_config

    image = load_launcher_config(config).vast.image
    if not image:
        fail("no repository to push to: give --repository, or set vast.image to <registry>/<namespace>/llm-forge")
    repo, _ = parse_repository_tag(image)
    if "/" not in repo:
        fail(f"vast.image in the launcher config is {repo!r}, not in a registry: set it to "
             "<registry>/<namespace>/llm-forge, or give --repository")
    return repo


@image_app.command()
def push(
    repository: Optional[str] = typer.Option(
        None, metavar="REPOSITORY", help="Where to push, e.g. <registry>/<namespace>/llm-forge. "
        "Default: $LLM_FORGE_IMAGE_REPO, else the launcher config's vast.image."),
    config: Optional[Path] = typer.Option(None, "--config", metavar="FILE", help="Launcher config (default: configs/launcher.yaml)."),
):
    """Push llm-forge:<version> to the registry; log in from $DOCKER_USERNAME/$DOCKER_PASSWORD."""
    from docker import auth
    from docker.errors import APIError, ImageNotFound

    repo = push_repository(repository, config)
    ver = project_version()
    client = docker_client()
    try:
        image = client.images.get(f"{IMAGE_NAME}:{ver}")
    except ImageNotFound:
        fail(f"no image {IMAGE_NAME}:{ver}: run `launcher image build` first")
    registry, _ = auth.resolve_repository_name(repo)
    user, password = os.environ.get("DOCKER_USERNAME"), os.environ.get("DOCKER_PASSWORD")
    if bool(user) != bool(password):
        fail("set both DOCKER_USERNAME and DOCKER_PASSWORD, or neither (to use `docker login`'s stored login)")
    if user:
        try:
            client.login(username=user, password=password, registry=registry)
        except APIError as e:
            fail(f"login to {registry} as {user} failed: {e.explanation}", 1)
    image.tag(repo, ver)
    show_push(client.api.push(repo, tag=ver, stream=True, decode=True))
    console.print(f"[green]pushed[/green] {repo}:{ver}  (set vast.image to this in the launcher config)",
                  highlight=False)


def show_push(stream) -> None:
    """One bar per layer from the push's JSON stream; fail on an error."""
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  console=console, transient=True) as progress:
        layers = {}
        for chunk in stream:
            if "error" in chunk:
                progress.stop()
                fail(f"push failed: {chunk['error'].strip()}", 1)
            layer = chunk.get("id")
            if not layer or "progressDetail" not in chunk:
                continue
            if layer not in layers:
                layers[layer] = progress.add_task(layer, total=None)
            detail = chunk["progressDetail"] or {}
            progress.update(layers[layer], description=f"{layer} {chunk.get('status', '')}",
                            completed=detail.get("current"), total=detail.get("total"))
