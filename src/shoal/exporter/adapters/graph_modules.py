"""The torch modules each family exports (input tensors -> graph outputs), and the small head
weights they load. Imported only when an export runs: planning an export (`shoal build --dry-run`,
the checks before any work) needs no torch."""

from __future__ import annotations

from typing import Any

import torch

from shoal.exporter.errors import ExportError
from shoal.postprocessing import (
    GRAPH_COLBERT_VECTORS,
    GRAPH_EMBEDDINGS,
    GRAPH_HIDDEN_STATES,
    GRAPH_LOGITS,
    GRAPH_SPARSE_WEIGHTS,
    GRAPH_TOKEN_LOGITS,
    GRAPH_TOKEN_VECTORS,
    GRAPH_TOKEN_WEIGHTS,
)


class HiddenStates(torch.nn.Module):
    """Embedders: the last hidden state; pooling happens in the postprocess step."""

    output_names = (GRAPH_HIDDEN_STATES,)

    def __init__(self, model: Any, token_type_ids: bool) -> None:
        super().__init__()
        self.model = model
        self.takes_token_type_ids = token_type_ids

    def call_model(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.takes_token_type_ids:
            kwargs["token_type_ids"] = token_type_ids
        return self.model(**kwargs)

    def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
        return self.call_model(input_ids, attention_mask, token_type_ids).last_hidden_state


class Logits(HiddenStates):
    """Cross-encoders: the classifier's logits (one score per pair)."""

    output_names = (GRAPH_LOGITS,)

    def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
        return self.call_model(input_ids, attention_mask, token_type_ids).logits


class TokenLogits(HiddenStates):
    """Token classifiers: the classifier's logits per token; entities are made in postprocess."""

    output_names = (GRAPH_TOKEN_LOGITS,)

    def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
        return self.call_model(input_ids, attention_mask, token_type_ids).logits


class DecoderHiddenStates(torch.nn.Module):
    """Positions count real tokens only (0 at each text's first token), so a left-padded text
    gets the same positions, and the same vector, as when it is alone: results never depend on
    which requests share a batch."""

    output_names = (GRAPH_HIDDEN_STATES,)

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Any, attention_mask: Any) -> Any:
        position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        ).last_hidden_state


class YesNoLogit(torch.nn.Module):
    """LLM rerankers: logit("yes") - logit("no") at the last position, [B, 1]. Only the two
    LM-head rows travel into the graph: the full-vocabulary logits are never computed. Left
    padding puts each row's last token at T-1; positions as DecoderHiddenStates."""

    output_names = (GRAPH_LOGITS,)

    def __init__(self, model: Any, yes_id: int, no_id: int) -> None:
        super().__init__()
        self.states = DecoderHiddenStates(model.get_decoder())
        head = model.get_output_embeddings()
        rows = head.weight.detach()[[yes_id, no_id]].clone()
        self.answers = torch.nn.Linear(rows.shape[1], 2, bias=head.bias is not None)
        with torch.no_grad():
            self.answers.weight.copy_(rows)
            if head.bias is not None:
                self.answers.bias.copy_(head.bias.detach()[[yes_id, no_id]])

    def forward(self, input_ids: Any, attention_mask: Any) -> Any:
        yes_no = self.answers(self.states(input_ids, attention_mask)[:, -1])
        return yes_no[:, :1] - yes_no[:, 1:]


class ColbertVectors(torch.nn.Module):
    output_names = (GRAPH_TOKEN_VECTORS,)

    def __init__(self, model: Any, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.model = model
        self.linear = linear

    def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
        hidden = self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        return self.linear(hidden)


class SpladeWeights(torch.nn.Module):
    """log1p(relu(MLM logits)), padding masked, max over tokens: [B, vocab] leaves the graph
    instead of [B, T, vocab] (vocab ~30k: this cuts what travels to postprocess by T times)."""

    output_names = (GRAPH_SPARSE_WEIGHTS,)

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
        logits = self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).logits
        weights = torch.log1p(torch.relu(logits)) * attention_mask.unsqueeze(-1).to(logits.dtype)
        return weights.max(dim=1).values


class BgeM3Outputs(torch.nn.Module):
    output_names = (GRAPH_HIDDEN_STATES, GRAPH_TOKEN_WEIGHTS, GRAPH_COLBERT_VECTORS)

    def __init__(self, model: Any, sparse_linear: Any, colbert_linear: Any) -> None:
        super().__init__()
        self.model = model
        self.sparse_linear = sparse_linear
        self.colbert_linear = colbert_linear

    def forward(self, input_ids: Any, attention_mask: Any) -> Any:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        token_weights = torch.relu(self.sparse_linear(hidden)).squeeze(-1)
        return hidden, token_weights, self.colbert_linear(hidden[:, 1:])


class Projected(torch.nn.Module):
    """A states module followed by linear layers applied to each token's state: a
    sentence-transformers Dense stack folded in before pooling (mean, CLS and last-token pooling
    commute with a linear map, bias included)."""

    def __init__(self, states: torch.nn.Module, layers: list[torch.nn.Linear]) -> None:
        super().__init__()
        self.states = states
        self.layers = torch.nn.ModuleList(layers)
        self.output_names = states.output_names

    def forward(self, *inputs: Any) -> Any:
        hidden = self.states(*inputs)
        for layer in self.layers:
            hidden = layer(hidden)
        return hidden


def load_dense(checkpoint: Any, module: Any) -> torch.nn.Linear:
    """The Linear of a sentence-transformers Dense module (`linear.weight`/`linear.bias` in its
    model.safetensors or pytorch_model.bin)."""
    folder = checkpoint.path / module.path
    try:
        if (folder / "model.safetensors").is_file():
            from safetensors.torch import load_file

            state = load_file(str(folder / "model.safetensors"))
        else:
            state = torch.load(
                folder / "pytorch_model.bin", map_location="cpu", weights_only=True
            )
        weights = {k.removeprefix("linear."): v for k, v in state.items()}
        linear = torch.nn.Linear(module.in_features, module.out_features, bias=module.bias)
        linear.load_state_dict(weights)
    except Exception as exc:  # torch and safetensors raise many kinds on a corrupt file
        raise ExportError(
            f"{folder}: the Dense module's weights are not readable ({exc}); restore them"
        ) from exc
    return linear.eval()


def load_linear(checkpoint: Any, filename: str) -> torch.nn.Linear:
    path = checkpoint.path / filename
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        weight = state["weight"]
    except Exception as exc:  # torch raises many kinds on a corrupt file
        raise ExportError(
            f"{path} is not a readable Linear state dict ({exc}); restore it"
        ) from exc
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in state)
    linear.load_state_dict(state)
    return linear.eval()


class TextTower(torch.nn.Module):
    """Image-text models: (input_ids[, attention_mask]) -> embeddings [B, D], what
    get_text_features returns (pooled and projected, not normalized)."""

    output_names = (GRAPH_EMBEDDINGS,)

    def __init__(self, model: Any, takes_mask: bool) -> None:
        super().__init__()
        self.model = model
        self.takes_mask = takes_mask

    def forward(self, input_ids: Any, attention_mask: Any = None) -> Any:
        mask = attention_mask if self.takes_mask else None
        return self.model.get_text_features(input_ids=input_ids, attention_mask=mask).pooler_output


class ImageTower(torch.nn.Module):
    """Image-text models: pixel_values [B, 3, H, W] -> embeddings [B, D] (get_image_features)."""

    output_names = (GRAPH_EMBEDDINGS,)

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: Any) -> Any:
        return self.model.get_image_features(pixel_values=pixel_values).pooler_output
