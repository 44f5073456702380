"""The `llamacpp` target: the champion's GGUF file (the `gguf` target's) served by llama-cpp-python's
OpenAI-compatible server on this machine.

    pip install 'llama-cpp-python[server]==0.3.36'      # compiles llama.cpp (minutes): not in `make install`
    lifecycle deploy --target llamacpp --port 3000
"""

from __future__ import annotations

import sys
from pathlib import Path

from flows.deploy.common import Deployed, DeployRefused, Options
from flows.deploy.gguf import OUT as GGUF_OUT
from flows.deploy.gguf import write as write_gguf

LLAMA_CPP = "llama-cpp-python[server]==0.3.36"  # compiles llama.cpp at install (minutes): not in `make install`


def require_llama_cpp() -> None:
    """DeployRefused, before anything is written, when llama-cpp-python's server is not installed."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        raise DeployRefused(
            f"llama.cpp's server is not installed: `pip install '{LLAMA_CPP}'` (it compiles llama.cpp), or serve "
            "the GGUF file from `--target gguf` with any llama.cpp build (`llama-server -m FILE`) or Ollama "
            "(`ollama create NAME -f Modelfile`)"
        )


def llamacpp_command(gguf_file: str, host: str, port: int, chat: bool) -> list[str]:
    """llama-cpp-python's OpenAI-compatible server on the GGUF file."""
    command = [sys.executable, "-m", "llama_cpp.server", "--model", gguf_file, "--host", host, "--port", str(port)]
    return command + ([] if chat else ["--chat_format", "raw"])  # no chat template: the prompt as rendered


def deploy(params, bento: str, version, options: Options) -> Deployed:
    """The GGUF file written (refused first when the server is not installed), and the server this process becomes
    (the CLI execs it); the file is what is recorded."""
    require_llama_cpp()
    detail = write_gguf(bento, version, Path(options.out or GGUF_OUT), options.gguf_type)
    return Deployed(
        detail,
        server=llamacpp_command(detail["file"], options.host, options.port, detail["chat"]),
        said=[
            f"serving {params.project.name} v{version.version} (@champion) with llama.cpp on "
            f"http://{options.host}:{options.port}"
        ],
    )
