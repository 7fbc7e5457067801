"""Method settings: backbone, heads, CMD loss, optimiser schedules and evaluation.

Defaults are sized for the CPU demo; every paper default is cited where it is set in
tune_spaces/recipes/paper.yaml and listed with its source in cmd_model/README.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from annotated_types import Ge, Gt, Interval

# Each set of names is spelled here only; code that needs the list uses typing.get_args.
MILForm = Literal["proper_kl", "official"]
Method = Literal["dino", "esvit", "cmd"]  # each adds a term: image; + region; + multi-instance
# The loss terms each method trains with (cmd_model/loss): the image term L_I (DINO), the region
# term L_R on the dense head (EsViT), the multi-instance terms L_S [+ L_T] (CMD, main_esvit.py "ours
# md"). The one place that says it: the networks, the loss, checkpoint loading and the config check
# read it through `method_uses`.
METHOD_TERMS: dict[str, tuple[str, ...]] = {"dino": ("image",), "esvit": ("image", "region"),
                                            "cmd": ("image", "region", "mil")}
MilPooling = Literal["sum", "mean", "attention"]
MilKLDirection = Literal["bag||image", "image||bag"]
MilKLReduction = Literal["batchmean", "mean"]
FeatureKind = Literal["cls", "avgpool", "last4", "last4cls"]  # see Backbone.features
RetrievalMode = Literal["every9", "test_vs_train"]


@dataclass
class ModelConfig:
    """Backbone (any timm ViT or Swin by name) and the two DINO heads."""

    backbone: str = "vit_tiny_patch16_224"
    # Passed to timm.create_model: lets a named ViT run at demo size (patch 8, 64 px, depth 4).
    backbone_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"patch_size": 8, "img_size": 64, "depth": 4}
    )
    drop_path_rate: Annotated[float, Interval(ge=0, lt=1)] = 0.0  # official Swin-T script: 0.1
    # Several crop sizes through one model (global 224 + local 96 in the paper): timm ViT
    # interpolates its position embedding per forward, timm Swin pads to the window and builds
    # its shift masks per forward (as EsViT's Swin does). See cmd_model/README.md.
    dynamic_img_size: bool = True
    # ViT only: stride-2 3x3 convs instead of the linear patch embedding (Xiao et al., NeurIPS 2021,
    # "Early Convolutions Help Transformers See Better"). Not in the paper (official: linear patches);
    # the demo turns it on because a tiny ViT learns too slowly from scratch in CPU minutes.
    conv_stem: bool = False
    # Where the run starts: an EsViT / CMD / DINO checkpoint in the official layout (student,
    # teacher, both heads and the centers are restored), a harness checkpoint, or a plain backbone
    # state dict. A local path (or file:// URL) or a bucket URI (s3://, gs://): every worker reads it.
    init_checkpoint: str | None = None
    # Heads: official code (EsViT DINOHead): 3-layer MLP, hidden 2048, bottleneck 256,
    # weight-normalised last layer, out_dim 65536, norm_last_layer False.
    out_dim: Annotated[int, Gt(0)] = 1024
    hidden_dim: Annotated[int, Gt(0)] = 512
    bottleneck_dim: Annotated[int, Gt(0)] = 128
    head_layers: Annotated[int, Gt(0)] = 3
    norm_last_layer: bool = False
    use_bn_in_head: bool = False


@dataclass
class LossConfig:
    """CMD loss terms; weights and temperatures from main_esvit.py DDINOLoss ("ours md")."""

    method: Method = "cmd"  # esvit: no MIL term; dino: image term only
    image_weight: Annotated[float, Ge(0)] = 0.5  # L_I, official: 0.5
    region_weight: Annotated[float, Ge(0)] = 0.5  # L_R, official: 0.5
    mil_weight: Annotated[float, Ge(0)] = 1.0  # lambda on L_S (+ L_T), official: 1.0 (earlier script 0.1)
    mil_pooling: MilPooling = "sum"  # mean: same distribution as sum; attention: gated MIL
    mil_attention_dim: Annotated[int, Gt(0)] = 64  # hidden size of the gated-attention MIL pooling
    teacher_mil_in_loss: bool = False  # official: L_T has no gradient; logged only
    # L_S / L_T form. "official": main_esvit.py `F.kl_div(s_cls[v], sum_j s_region)` on raw
    # logits / tau_s with torch <= 1.10 semantics (its gradient balance: ||dL_S|| / ||dL_I||
    # measured in cmd_model/README.md); "proper_kl": a KL between distributions (the paper's words).
    mil_form: MILForm = "proper_kl"
    # mil_form "proper_kl" only. Official F.kl_div(image, bag) is KL(bag || image); "image||bag"
    # is the other direction.
    mil_kl_direction: MilKLDirection = "bag||image"
    # mil_form "proper_kl" only. F.kl_div's default reduction "mean" averages over B*K elements
    # (on distributions the term is then 1/K of the per-image KL); "batchmean" (default here) is
    # the KL per image. See README.
    mil_kl_reduction: MilKLReduction = "batchmean"
    # Collapse flag: teacher entropy above this fraction of ln(out_dim) (uniform outputs), or
    # one prototype for the whole batch (dominant output). Not in the sources; README.
    collapse_entropy_frac: Annotated[float, Interval(ge=0, le=1)] = 0.95
    student_temp: Annotated[float, Gt(0)] = 0.1
    teacher_temp: Annotated[float, Gt(0)] = 0.07  # final teacher temperature
    warmup_teacher_temp: Annotated[float, Gt(0)] = 0.04
    warmup_teacher_temp_epochs: Annotated[int, Ge(0)] = 30
    center_momentum: Annotated[float, Interval(ge=0, le=1)] = 0.9


@dataclass
class OptimConfig:
    """AdamW with DINO's per-iteration schedules (main_esvit.py / DINO utils.cosine_scheduler)."""

    epochs: Annotated[int, Gt(0)] = 100
    lr: Annotated[float, Gt(0)] = 5e-4  # per 256 images of global batch: lr = lr * batch / 256
    min_lr: Annotated[float, Ge(0)] = 1e-6
    warmup_epochs: Annotated[int, Ge(0)] = 10
    weight_decay: Annotated[float, Ge(0)] = 0.04
    weight_decay_end: Annotated[float, Ge(0)] = 0.4
    momentum_teacher: Annotated[float, Interval(ge=0, le=1)] = 0.996  # cosine to 1.0 per iteration
    clip_grad: Annotated[float, Ge(0)] = 3.0  # per-parameter norm clip, 0 disables
    freeze_last_layer: Annotated[int, Ge(0)] = 1  # epochs with the heads' last layer frozen
    accumulate: Annotated[int, Gt(0)] = 1  # gradient accumulation steps


@dataclass
class EvalConfig:
    """Frozen-teacher evaluation: the fast probe is the Tune objective."""

    probe_every: Annotated[int, Gt(0)] = 1  # epochs between probe evaluations (the last epoch always)
    # What each kind is: cmd_model.backbone.Backbone.features (official probe: last4; DINO ViT: last4cls)
    probe_feature: FeatureKind = "cls"
    # kNN and retrieval feature; official eval_knn.py / retrieval.py: the pooled final feature.
    knn_feature: FeatureKind = "cls"
    # RankMe (cmd_model/rankme.py) of the val features of this kind, every probed epoch: a label-free
    # signal. Not in the CMD sources; RankMe's paper measures the backbone's representation, so the
    # pooled final feature by default (cmd_model/README.md).
    rankme_feature: FeatureKind = "cls"
    # Shards without labels: each measured epoch reports RankMe alone (no probe, kNN or retrieval),
    # and a study selects on it (`metric: rankme`).
    label_free: bool = False
    probe_epochs: Annotated[int, Gt(0)] = 100  # full-batch L-BFGS iterations for the fast probe
    probe_weight_decay: Annotated[float, Ge(0)] = 1e-4
    knn_k: tuple[Annotated[int, Gt(0)], ...] = (10, 20, 100, 200)
    knn_temperature: Annotated[float, Gt(0)] = 0.07
    retrieval_mode: RetrievalMode = "every9"  # every9: the official default
    max_train_images: Annotated[int, Gt(0)] | None = None  # cap on probe train features (speed)
    # Official linear-probe protocol (EsViT eval_linear.py): SGD momentum 0.9, no weight decay,
    # lr 0.001 * batch / 256, cosine, 100 epochs, best test top-1 over epochs.
    paper_probe_epochs: Annotated[int, Gt(0)] = 100
    paper_probe_lr: Annotated[float, Gt(0)] = 0.001
    paper_probe_batch: Annotated[int, Gt(0)] = 256


def method_uses(method: str, term: str) -> bool:
    """Whether `method` trains with loss `term` ("image", "region" or "mil"): METHOD_TERMS. The
    region and multi-instance terms both need the dense head."""
    if method not in METHOD_TERMS:
        raise ValueError(f"loss.method={method!r}; expected one of {tuple(METHOD_TERMS)}")
    return term in METHOD_TERMS[method]
