"""Every number COVER's behaviour depends on, in one place.

Values follow upstream's ``cover.yml`` and inference scripts (see docs/cover-behaviour.md). The runtime, the
export side, the CUDA kernels' host code and the manifest all read them from here.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Optional

#: Branch names, in the order upstream sums them.
BRANCHES: tuple[str, ...] = ("semantic", "technical", "aesthetic")

#: ImageNet statistics on 0..255 RGB (technical and aesthetic views).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
#: CLIP statistics on 0..255 RGB (semantic view), as upstream rounds them.
CLIP_MEAN = (122.77, 116.75, 104.09)
CLIP_STD = (68.50, 66.63, 70.32)


@dataclass(frozen=True)
class ViewSpec:
    """How one branch's view is sampled from a video (one entry of upstream's ``sample_types``).

    ``kind`` is ``"resize"`` (whole frame resized to ``size_h`` x ``size_w``) or ``"fragments"``
    (a ``fragments_h`` x ``fragments_w`` grid of ``fsize_h`` x ``fsize_w`` raw-resolution crops).
    """

    name: str
    kind: str
    clip_len: int
    t_frag: int
    frame_interval: int
    num_clips: int = 1
    size_h: int = 0
    size_w: int = 0
    fragments_h: int = 0
    fragments_w: int = 0
    fsize_h: int = 0
    fsize_w: int = 0
    aligned: int = 0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def fsize_t(self) -> int:
        """Frames per temporal segment (upstream ``clip_len // t_frag``)."""
        return self.clip_len // self.t_frag

    @property
    def out_h(self) -> int:
        return self.fragments_h * self.fsize_h if self.kind == "fragments" else self.size_h

    @property
    def out_w(self) -> int:
        return self.fragments_w * self.fsize_w if self.kind == "fragments" else self.size_w

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_sample_type(cls, name: str, opts: dict) -> "ViewSpec":
        """Build from one entry of upstream's ``sample_types`` mapping (``sample_types.json``)."""
        kind = "fragments" if "fragments_h" in opts else "resize"
        mean, std = (CLIP_MEAN, CLIP_STD) if name == "semantic" else (IMAGENET_MEAN, IMAGENET_STD)
        keys = {f for f in cls.__dataclass_fields__} - {"name", "kind", "mean", "std"}
        return cls(name=name, kind=kind, mean=mean, std=std,
                   **{k: int(v) for k, v in opts.items() if k in keys})


#: The official sample settings (identical for every dataset in upstream's ``cover.yml``).
SAMPLE_TYPES: dict[str, dict] = {
    "semantic": dict(size_h=512, size_w=512, clip_len=20, frame_interval=2, t_frag=20, num_clips=1),
    "technical": dict(fragments_h=7, fragments_w=7, fsize_h=32, fsize_w=32, aligned=40,
                      clip_len=40, t_frag=20, frame_interval=2, num_clips=1),
    "aesthetic": dict(size_h=224, size_w=224, clip_len=40, frame_interval=2, t_frag=20, num_clips=1),
}

OFFICIAL_VIEWS: dict[str, ViewSpec] = {
    name: ViewSpec.from_sample_type(name, opts) for name, opts in SAMPLE_TYPES.items()
}

#: Upstream's images path: a single frame is one T=1 view; technical and aesthetic backbones
#: then see it duplicated (T=2).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts",
                    ".flv", ".wmv", ".3gp", ".y4m")


#: ``--torch-mode`` values: how the torch backend runs the model (compile: torch.compile;
#: cuda-graphs: one captured CUDA graph per input shape, replayed; CUDA only).
TORCH_MODES: tuple[str, ...] = ("eager", "compile", "cuda-graphs", "compile+cuda-graphs")

#: Codecs NVDEC has decoders for, by the name FFmpeg/PyAV gives the stream's decoder. Anything
#: else (ProRes, FFV1, MJPEG, raw video, ...) takes the CPU path without asking the GPU. Whether
#: this GPU decodes a codec at the stream's bit depth is asked of the driver per file
#: (``GetDecoderCaps``; an H100 has no H.264 High10, older GPUs no AV1).
NVDEC_CODECS: dict[str, str] = {
    "h264": "H.264", "hevc": "HEVC", "vp9": "VP9", "libvpx-vp9": "VP9", "av1": "AV1",
    "libdav1d": "AV1", "libaom-av1": "AV1", "vp8": "VP8", "libvpx": "VP8",
    "mpeg1video": "MPEG-1", "mpeg2video": "MPEG-2", "mpeg4": "MPEG-4", "vc1": "VC-1",
}
#: Largest frame NVDEC decoders are opened for first (reused for every file up to this size
#: through ``ReconfigureDecoder``; a larger file opens a decoder for its own size).
NVDEC_MAX_SIZE: tuple[int, int] = (3840, 2160)
#: Container setting that gives a Docker/Kubernetes GPU container the NVDEC library; without
#: ``video`` in it every file silently takes the CPU path.
NVDEC_CONTAINER_HINT = "containers need NVIDIA_DRIVER_CAPABILITIES to include video"

@dataclass(frozen=True)
class WeightFile:
    """A published weight file: where it lives, and how to recognise it."""

    name: str
    urls: tuple[str, ...]
    sha256: str
    size: Optional[int] = None
    env: str = ""
    description: str = ""


COVER_WEIGHTS = WeightFile(
    name="COVER.pth",
    urls=(
        "https://github.com/vztu/COVER/raw/release/Model/COVER.pth",
        "https://media.githubusercontent.com/media/vztu/COVER/release/Model/COVER.pth",
    ),
    sha256="43a0fc777fe46e5e0513c50bf4b3dc5343fc82214e8f6e66b2bc068f0755875e",
    size=262292246,
    env="COVER_WEIGHTS",
    description="COVER branches, gates and heads (no CLIP image tower)",
)

CLIP_WEIGHTS = WeightFile(
    name="ViT-L-14.pt",
    urls=(
        "https://openaipublic.azureedge.net/clip/models/"
        "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
    ),
    sha256="b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836",
    size=None,
    env="COVER_CLIP_WEIGHTS",
    description="OpenAI CLIP ViT-L/14 (TorchScript archive, fp16)",
)

#: Environment variable naming the weight cache folder.
COVER_HOME_ENV = "COVER_HOME"


def views_for_inputs(inputs: dict[str, tuple[int, ...]] | None) -> dict[str, ViewSpec]:
    """View settings matching a model's input shapes ``{branch: (B, 3, T, H, W)}``.

    The official shapes give exactly :data:`OFFICIAL_VIEWS`. Smaller test configs (the reference
    vectors use a 112 px semantic view and 8-frame clips) keep the official sampling rules and
    change only the sizes: ``T`` frames in segments of ``clip_len // t_frag`` frames, resized to
    ``H x W``, or fragments of the official size tiled over ``H x W``.
    """
    if not inputs:
        return dict(OFFICIAL_VIEWS)
    out: dict[str, ViewSpec] = {}
    for name, base in OFFICIAL_VIEWS.items():
        if name not in inputs:
            out[name] = base
            continue
        _, _, t, h, w = (int(v) for v in inputs[name])
        fsize_t = base.fsize_t
        changes: dict = dict(clip_len=t, t_frag=max(1, t // fsize_t))
        if base.kind == "fragments":
            changes.update(fragments_h=h // base.fsize_h, fragments_w=w // base.fsize_w,
                           aligned=t if base.aligned == base.clip_len else base.aligned)
        else:
            changes.update(size_h=h, size_w=w)
        out[name] = replace(base, **changes)
    return out

#: Limits on JSON a user hands us (manifest.json, model configs). A manifest is tens of kB and
#: nests 7 levels deep; these only stop hostile files (memory, RecursionError, slow int parsing).
JSON_MAX_BYTES = 16 << 20
JSON_MAX_DEPTH = 32
JSON_MAX_INT_DIGITS = 30

#: YUV -> RGB conversions ``cover-run --colour`` offers (``runtime/media/colour.py``): "decord" is
#: what upstream's decoder (decord: FFmpeg 4.1 swscale on x86-64) returns, bit for bit; "exact"
#: is the signalled matrix in float32 with nearest chroma, rounded half to even.
COLOUR_MODES: tuple[str, ...] = ("decord", "exact")
DEFAULT_COLOUR = "decord"

#: ``--clips``: clips averaged per file (each is decoded and scored; upstream uses 1).
MAX_CLIPS = 64
#: ``--seed``: numpy seeds are non-negative; 32 bits keeps the value portable to a C++ host.
MAX_SEED = 2**32 - 1

# ----------------------------------------------------------------------------- calibration

#: Fewest labelled videos ``cover-eval --fit-calibration`` fits a logistic to: four parameters
#: need several times as many points before the curve means anything (dozens are better).
MIN_CALIBRATION_VIDEOS = 10
#: Fewest videos a reference distribution (``--reference-distribution``) is made from.
MIN_REFERENCE_VIDEOS = 10
#: Nominal MOS scales of the common VQA sets; a calibration records the narrowest that holds
#: its set's MOS unless the scale is given (KoNViD-1k, YouTube-UGC: 1-5; LSVQ, LIVE-VQC: 0-100).
MOS_SCALES: tuple[tuple[float, float], ...] = (
    (0.0, 1.0), (1.0, 5.0), (0.0, 5.0), (1.0, 10.0), (0.0, 10.0), (0.0, 100.0))
#: How many of a file's lowest-scoring windows ``--timeline-plot`` marks (fewer on short files:
#: at most one window in :data:`WORST_WINDOW_FRACTION`).
WORST_WINDOWS = 3
WORST_WINDOW_FRACTION = 0.25

# ----------------------------------------------------------------------------- cover-train
# Upstream's transfer-learning recipe (``cover.yml`` + ``train_one_dataset.py``): head-only
# ("linear") epochs, AdamW, linear warm-up then cosine decay, EMA weights, random 80/20 splits.

#: Head-only epochs (``l_num_epochs``) and warm-up length in epochs (``warmup_epochs``).
TRAIN_EPOCHS = 10
TRAIN_WARMUP_EPOCHS = 2.5
#: Videos per optimisation step (``batch_size``).
TRAIN_BATCH = 8
#: AdamW learning rate and weight decay (``optimizer.lr``, ``optimizer.wd``); backbones, when
#: unfrozen, learn at ``lr * TRAIN_BACKBONE_LR_MULT`` (``backbone_lr_mult``).
TRAIN_LR = 1e-3
TRAIN_WEIGHT_DECAY = 0.05
TRAIN_BACKBONE_LR_MULT = 0.1
#: Decay of the exponential moving average of the weights, evaluated beside the raw weights.
TRAIN_EMA_DECAY = 0.999
#: Loss per branch: PLCC loss + this x rank loss, summed over the branches.
TRAIN_RANK_WEIGHT = 0.3
#: Split seed (``split_seed``); split ``i`` (0-based) shuffles with ``seed * (i + 1)`` and keeps the
#: first ``int(0.8 * n)`` videos for training, as upstream's ``train_test_split``.
TRAIN_SPLIT_SEED = 42
TRAIN_VAL_FRACTION = 0.2
#: Fewer labelled videos than this cannot train anything meaningful; a validation part needs
#: at least this many videos for a rank correlation worth reporting.
TRAIN_MIN_VIDEOS = 10
TRAIN_MIN_VAL_VIDEOS = 3
#: Seed of the random (upstream-style) sampling of the augmentation clips; fixed, so that the
#: feature cache serves every split and training seed.
TRAIN_SAMPLE_SEED = 0
#: Peak host memory of one ``cover-batch`` worker, in bytes (``runtime.batch.resources``).
#: "official": the peak resident size of one Ray worker scoring a 1080p clip at official size on
#: a CPU, measured (BENCHMARKS.md, "Memory per worker": 6.05 GiB with ONNX Runtime, 3.61 GiB
#: with torch), rounded up; other cases are estimated as
#: ``base + per_graph_byte * (size of the exported graphs or weights)``, the factor calibrated on
#: that official ONNX Runtime worker (0.75 GiB + 3.5 x its 1.62 GB of graphs = 6.0 GiB).
WORKER_MEMORY: dict = {
    "official": {"cpu": {"onnxruntime": 6.25 * 1024 ** 3, "torch": 3.75 * 1024 ** 3}},
    "base": 0.75 * 1024 ** 3,
    "per_graph_byte": 3.5,
}

#: fp32 graphs attend this many CLIP heads at a time (``attention_in_head_chunks``): ONNX Runtime's
#: CPU provider holds the attention scores and their softmax whole, 4.3 GB per layer at official
#: size with all 16 heads; 4 at a time keeps them at a quarter (BENCHMARKS.md,
#: "ONNX Runtime memory"); the CPU probe (``export.cpu_probe``) times attention the same way.
ATTENTION_HEAD_CHUNK = 4
