"""`deploy --target gguf`: a GGUF file llama.cpp's own reader opens, with the tensors and metadata it expects, that
answers as the packaged model does when read back (transformers dequantizes GGUF with gguf-py)."""

import json
from pathlib import Path

import pytest

from stages.common import gguf_file


def _greedy(model, tokenizer, prompts: list[str]) -> list[list[int]]:
    import torch

    out = []
    for p in prompts:
        ids = tokenizer(p, return_tensors="pt").input_ids
        with torch.no_grad():
            out.append(model.generate(ids, max_new_tokens=8, do_sample=False)[0].tolist())
    return out


def test_a_q8_0_file_has_llama_cpps_names_types_and_tokenizer_and_answers_as_the_model(untrained_lm, tmp_path):
    from gguf import GGMLQuantizationType, GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "tiny-Q8_0.gguf"
    written = gguf_file.write(Path(untrained_lm), out, "Q8_0", "tiny")
    assert written["file"] == str(out) and written["bytes"] == out.stat().st_size
    assert not list(tmp_path.glob(".*.tmp")), "written through a temporary file"
    reader = GGUFReader(out)
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    tokenizer = AutoTokenizer.from_pretrained(untrained_lm)
    assert field("general.architecture") == "llama" and field("llama.block_count") == 1
    assert field("llama.embedding_length") == 32 and field("llama.attention.head_count") == 2
    assert field("tokenizer.ggml.model") == "gpt2" and len(field("tokenizer.ggml.tokens")) == len(tokenizer)
    assert field("tokenizer.ggml.merges"), "byte-level BPE needs its merges"
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert set(types) == {
        "token_embd.weight",
        "output_norm.weight",
        *(f"blk.0.{n}.weight" for n in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output")),
        *(f"blk.0.{n}.weight" for n in ("ffn_norm", "ffn_gate", "ffn_up", "ffn_down")),
    }, "a tied head is llama.cpp's token_embd: no output.weight"
    assert types["blk.0.attn_q.weight"] == GGMLQuantizationType.Q8_0 and types["token_embd.weight"] == (
        GGMLQuantizationType.Q8_0
    )
    assert types["output_norm.weight"] == GGMLQuantizationType.F32, "1-D tensors stay F32, as llama.cpp keeps them"

    prompts = ["heapq.heappush(heap, item)", "Return the", "os.path"]
    original = AutoModelForCausalLM.from_pretrained(untrained_lm).eval()
    read_back = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name).eval()
    assert (
        AutoTokenizer.from_pretrained(tmp_path, gguf_file=out.name)(prompts[0]).input_ids
        == tokenizer(prompts[0]).input_ids
    ), "the same token ids from the file's tokenizer"
    assert _greedy(read_back, tokenizer, prompts) == _greedy(original, tokenizer, prompts), (
        "Q8_0 keeps the greedy answers (and the q/k permutation is llama.cpp's: transformers undoes exactly that)"
    )


def test_k_quants_and_other_architectures_are_refused_with_what_to_do(untrained_lm, tmp_path):
    from types import SimpleNamespace

    with pytest.raises(gguf_file.GgufRefused, match="llama-quantize model-F16.gguf model-Q4_K_M.gguf Q4_K_M"):
        gguf_file.write(Path(untrained_lm), tmp_path / "x.gguf", "Q4_K_M", "tiny")
    with pytest.raises(gguf_file.GgufRefused, match="'gpt2'; this writer knows the Llama architecture"):
        gguf_file.refuse_unsupported(SimpleNamespace(model_type="gpt2"), "Q8_0")
    assert not list(tmp_path.iterdir()), "nothing written"


def test_deploy_gguf_writes_the_champion_and_a_modelfile_and_records_it(
    packaged, tiny, tiny_root, tmp_path, monkeypatch
):
    from gguf import GGUFReader
    from mlflow import MlflowClient

    from tests.flows.test_deploy import _deploy

    out = tmp_path / "gguf"
    assert _deploy(monkeypatch, tiny_root, "--target", "gguf", "--out", str(out), "--gguf-type", "Q4_0") == 0
    version = MlflowClient().get_model_version_by_alias(tiny.project.name, "champion")
    file = out / f"{packaged['package']['bento'].split(':')[0]}-v{version.version}-Q4_0.gguf"
    assert GGUFReader(file).fields["general.name"].contents() == f"{tiny.project.name} v{version.version}"
    modelfile = (out / "Modelfile").read_text()
    assert (
        modelfile.startswith(f"FROM ./{file.name}\nPARAMETER temperature 0\n") and 'PARAMETER stop "\\n"' in modelfile
    )
    recorded = json.loads(
        MlflowClient().get_model_version(tiny.project.name, version.version).tags["lifecycle.deploy.gguf"]
    )
    assert recorded["type"] == "Q4_0" and recorded["file"] == str(file) and recorded["bytes"] == file.stat().st_size


def test_llamacpp_without_llama_cpp_python_is_refused_before_anything_is_written(
    packaged, tiny_root, tmp_path, monkeypatch, capsys
):
    import importlib.util

    from tests.flows.test_deploy import _deploy

    if importlib.util.find_spec("llama_cpp") is not None:
        pytest.skip("llama-cpp-python is installed here: the refusal cannot happen")
    out = tmp_path / "gguf"
    assert _deploy(monkeypatch, tiny_root, "--target", "llamacpp", "--out", str(out)) == 1
    err = capsys.readouterr().err
    assert "llama.cpp's server is not installed: `pip install 'llama-cpp-python[server]==0.3.36'`" in err
    assert not out.exists()
