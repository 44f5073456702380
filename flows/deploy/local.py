"""The `local` target: the champion's bento served on this machine by `bentoml serve`.

lifecycle deploy --target local --port 3000     # `lifecycle serve` is the short form
"""

from __future__ import annotations

from flows.deploy.common import Deployed, Options, bentoml_cli


def local_command(bento: str, host: str, port: int) -> list[str]:
    return [bentoml_cli(), "serve", bento, "--host", host, "--port", str(port)]


def deploy(params, bento: str, version, options: Options) -> Deployed:
    """The server this process becomes (the CLI execs it), and the address it is recorded under."""
    return Deployed(
        detail={"address": f"{options.host}:{options.port}"},
        server=local_command(bento, options.host, options.port),
        said=[f"serving {params.project.name} v{version.version} (@champion) on http://{options.host}:{options.port}"],
    )
