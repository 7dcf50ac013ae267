"""The image processor families of transformers, as data: defaults, steps, and the config keys each reads.

Each entry describes one image processor class as transformers 5 defines it (its PIL backend, the
reference the tests compare with): the class defaults a preprocessor_config.json falls back on, which
steps it runs and in what order, and the extra keys it reads. A config names its processor by
``image_processor_type`` (or the legacy ``feature_extractor_type``: ``ViTFeatureExtractor`` is
``ViTImageProcessor``), or, lacking both, by config.json's ``model_type`` as transformers' AutoImageProcessor
does. A processor imgcls does not reproduce, or a key of its family set to something imgcls does not
implement, is refused at start: serving it with a guessed preprocessing would give confident wrong answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from imgcls.server.domain.errors import InvalidInputError
from imgcls.server.images.decoding import brief

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
IMAGENET_STANDARD_MEAN = (0.5, 0.5, 0.5)
IMAGENET_STANDARD_STD = (0.5, 0.5, 0.5)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

BILINEAR, BICUBIC = 2, 3

# How a family turns `size` into the resize it runs.
#   plain: size as it is (exact height x width, or the shortest edge with the aspect kept);
#   convnext: shortest edge < 384 -> resize the shortest edge to shortest/crop_pct, then crop a square of
#             shortest; >= 384 -> warp to a square (a height/width size is refused, as transformers does);
#   levit: shortest edge -> resize the shortest edge to int(256/224 * shortest_edge);
#   poolformer: resize the shortest edge to int(size/crop_pct) (non-square height/width: both divided).
ResizeRule = Literal["plain", "convnext", "levit", "poolformer"]

# Keys every family reads (transformers' ImagesKwargs that change pixels), and those that never change
# them (metadata, output format, label handling, imgcls's own keys for custom models).
COMMON_KEYS = frozenset(
    {
        "do_resize",
        "size",
        "default_to_square",
        "resample",
        "do_center_crop",
        "crop_size",
        "do_rescale",
        "rescale_factor",
        "do_normalize",
        "image_mean",
        "image_std",
        "do_convert_rgb",  # imgcls always makes RGB: the same as transformers for every RGB image
        "channel_order",  # imgcls's own: custom model specs, and the graph's layout (engine/model.py)
        "input_layout",
    }
)
NEUTRAL_KEYS = frozenset(
    {
        "image_processor_type",
        "feature_extractor_type",
        "processor_class",
        "_processor_class",
        "model_input_names",
        "return_tensors",
        "data_format",
        "input_data_format",
        "device",
        "disable_grouping",
        "image_seq_length",
        "do_reduce_labels",  # segmentation maps only
        "reduce_labels",
    }
)
# Keys transformers' processors read that imgcls does not implement: accepted only at these values,
# where they do nothing.
INERT_VALUES: Mapping[str, tuple[Any, ...]] = MappingProxyType(
    {"do_pad": (None, False), "pad_size": (None,), "max_size": (None,)}
)
# Keys that mean the preprocessing is not a transformers class at all.
FOREIGN_KEYS = frozenset({"auto_map"})


@dataclass(frozen=True)
class Family:
    """One transformers image processor class."""

    processor: str  # its class name, e.g. "ViTImageProcessor"
    defaults: Mapping[str, Any]  # its class attributes, for keys a config leaves out
    resize_rule: ResizeRule = "plain"
    crop_first: bool = False  # Perceiver: crop size/crop_size of the shorter side, then resize
    normalizes: bool = True  # MobileViT never normalizes, whatever do_normalize says
    extra_keys: frozenset[str] = frozenset()  # keys beyond COMMON_KEYS that it reads
    ignored_keys: frozenset[str] = frozenset()  # keys its repos ship that it never read
    models: tuple[str, ...] = ()  # config.json model_type values that use it
    examples: tuple[str, ...] = field(default=(), compare=False)  # real Hub repos, for the docs

    @property
    def keys(self) -> frozenset[str]:
        return COMMON_KEYS | self.extra_keys


def _defaults(
    *,
    size: dict[str, int] | None,
    resample: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    default_to_square: bool = True,
    crop_size: dict[str, int] | None = None,
    do_center_crop: bool | None = None,
    do_normalize: bool | None = True,
    **extra: Any,
) -> Mapping[str, Any]:
    return MappingProxyType(
        {
            "do_resize": True,
            "size": size,
            "default_to_square": default_to_square,
            "resample": resample,
            "do_center_crop": do_center_crop,
            "crop_size": crop_size,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": do_normalize,
            "image_mean": mean,
            "image_std": std,
            **extra,
        }
    )


def _square(side: int) -> dict[str, int]:
    return {"height": side, "width": side}


_VIT = _defaults(size=_square(224), resample=BILINEAR, mean=IMAGENET_STANDARD_MEAN, std=IMAGENET_STANDARD_STD)
_BIT = _defaults(
    size={"shortest_edge": 224},
    resample=BICUBIC,
    mean=OPENAI_CLIP_MEAN,
    std=OPENAI_CLIP_STD,
    default_to_square=False,
    crop_size=_square(224),
    do_center_crop=True,
)
_MOBILENET = _defaults(
    size={"shortest_edge": 256},
    resample=BILINEAR,
    mean=IMAGENET_STANDARD_MEAN,
    std=IMAGENET_STANDARD_STD,
    default_to_square=False,
    crop_size=_square(224),
    do_center_crop=True,
)

FAMILIES: tuple[Family, ...] = (
    Family(
        "ViTImageProcessor",
        _VIT,
        models=("vit", "swin", "swinv2", "dinat", "vit_msn", "ijepa", "swiftformer"),
        examples=(
            "google/vit-base-patch16-224",
            "microsoft/swin-tiny-patch4-window7-224",
            "shi-labs/dinat-mini-in1k-224",
        ),
    ),
    Family(
        "DeiTImageProcessor",
        _defaults(
            size=_square(256),
            resample=BICUBIC,
            mean=IMAGENET_STANDARD_MEAN,
            std=IMAGENET_STANDARD_STD,
            crop_size=_square(224),
            do_center_crop=True,
        ),
        models=("deit",),
        examples=("facebook/deit-small-patch16-224", "facebook/deit-base-distilled-patch16-224"),
    ),
    Family(
        "BeitImageProcessor",
        _defaults(
            size=_square(224),
            resample=BICUBIC,
            mean=IMAGENET_STANDARD_MEAN,
            std=IMAGENET_STANDARD_STD,
            crop_size=_square(224),
            do_center_crop=False,
        ),
        models=("beit", "data2vec-vision"),
        examples=("microsoft/beit-base-patch16-224", "facebook/data2vec-vision-base-ft1k"),
    ),
    Family(
        "ConvNextImageProcessor",
        _defaults(
            size={"shortest_edge": 384},
            resample=BICUBIC,
            mean=IMAGENET_STANDARD_MEAN,
            std=IMAGENET_STANDARD_STD,
            default_to_square=False,
            crop_pct=224 / 256,
        ),
        resize_rule="convnext",
        extra_keys=frozenset({"crop_pct"}),
        models=("convnext", "convnextv2", "cvt", "regnet", "resnet", "van"),
        examples=("facebook/convnext-tiny-224", "microsoft/resnet-50", "facebook/regnet-y-040", "microsoft/cvt-13"),
    ),
    Family(
        "MobileNetV1ImageProcessor",
        _MOBILENET,
        models=("mobilenet_v1",),
        examples=("google/mobilenet_v1_1.0_224",),
    ),
    Family(
        "MobileNetV2ImageProcessor",
        _MOBILENET,
        models=("mobilenet_v2",),
        examples=("google/mobilenet_v2_1.0_224",),
    ),
    Family(
        "MobileViTImageProcessor",
        _defaults(
            size={"shortest_edge": 224},
            resample=BICUBIC,
            mean=IMAGENET_STANDARD_MEAN,
            std=IMAGENET_STANDARD_STD,
            default_to_square=False,
            crop_size=_square(256),
            do_center_crop=True,
            do_normalize=None,
            do_flip_channel_order=True,
        ),
        normalizes=False,
        extra_keys=frozenset({"do_flip_channel_order"}),
        models=("mobilevit", "mobilevitv2"),
        examples=("apple/mobilevit-small", "Xenova/mobilevit-small", "apple/mobilevitv2-1.0-imagenet1k-256"),
    ),
    Family(
        "EfficientNetImageProcessor",
        _defaults(
            size=_square(346),
            resample=BICUBIC,
            mean=IMAGENET_STANDARD_MEAN,
            std=IMAGENET_STANDARD_STD,
            crop_size=_square(289),
            do_center_crop=False,
            rescale_offset=False,
            include_top=True,
        ),
        extra_keys=frozenset({"rescale_offset", "include_top"}),
        models=("efficientnet",),
        examples=("google/efficientnet-b0", "google/efficientnet-b7"),
    ),
    Family(
        "LevitImageProcessor",
        _defaults(
            size={"shortest_edge": 224},
            resample=BICUBIC,
            mean=IMAGENET_DEFAULT_MEAN,
            std=IMAGENET_DEFAULT_STD,
            default_to_square=False,
            crop_size=_square(224),
            do_center_crop=True,
        ),
        resize_rule="levit",
        models=("levit",),
        examples=("facebook/levit-128S", "facebook/levit-256"),
    ),
    Family(
        "PoolFormerImageProcessor",
        _defaults(
            size={"shortest_edge": 224},
            resample=BICUBIC,
            mean=IMAGENET_DEFAULT_MEAN,
            std=IMAGENET_DEFAULT_STD,
            default_to_square=False,
            crop_size=_square(224),
            do_center_crop=True,
            crop_pct=0.9,
        ),
        resize_rule="poolformer",
        extra_keys=frozenset({"crop_pct"}),
        models=("poolformer",),
        examples=("sail/poolformer_s12", "sail/poolformer_m36"),
    ),
    Family(
        "PerceiverImageProcessor",
        _defaults(
            size=_square(224),
            resample=BICUBIC,
            mean=IMAGENET_DEFAULT_MEAN,
            std=IMAGENET_DEFAULT_STD,
            crop_size=_square(256),
            do_center_crop=True,
        ),
        crop_first=True,
        models=("perceiver",),
        examples=("deepmind/vision-perceiver-learned", "deepmind/vision-perceiver-conv"),
    ),
    Family(
        "BitImageProcessor",
        _BIT,
        models=("bit", "dinov2", "dinov2_with_registers", "focalnet", "hiera"),
        examples=("google/bit-50", "facebook/dinov2-small-imagenet1k-1-layer", "microsoft/focalnet-tiny"),
    ),
    # Removed from transformers 5; in 4.x a copy of BitImageProcessor, names and all.
    Family("ViTHybridImageProcessor", _BIT, models=("vit-hybrid",), examples=("google/vit-hybrid-base-bit-384",)),
    Family(
        "CLIPImageProcessor",
        _BIT,
        models=("clip", "metaclip_2"),
        examples=("openai/clip-vit-base-patch32",),
    ),
    Family(
        "SiglipImageProcessor",
        _defaults(
            size=_square(224),
            resample=BICUBIC,
            mean=IMAGENET_STANDARD_MEAN,
            std=IMAGENET_STANDARD_STD,
            default_to_square=False,
        ),
        models=("siglip",),
        examples=("google/siglip-base-patch16-224",),
    ),
    Family(
        "SegformerImageProcessor",
        _defaults(size=_square(512), resample=BILINEAR, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD),
        models=("segformer",),
        examples=("nvidia/mit-b0",),
    ),
    Family(
        "PvtImageProcessor",
        _defaults(size=_square(224), resample=BICUBIC, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD),
        models=("pvt", "pvt_v2"),
        examples=("Zetatech/pvt-tiny-224", "OpenGVLab/pvt_v2_b0"),
    ),
    # Removed from transformers 5; 4.x's class read no crop_pct, though its repos ship one.
    Family(
        "EfficientFormerImageProcessor",
        _defaults(
            size=_square(224),
            resample=BICUBIC,
            mean=IMAGENET_DEFAULT_MEAN,
            std=IMAGENET_DEFAULT_STD,
            crop_size=_square(224),
            do_center_crop=True,
        ),
        ignored_keys=frozenset({"crop_pct"}),
        models=("efficientformer",),
        examples=("snap-research/efficientformer-l1-300",),
    ),
    # imgcls's own: a custom model spec written as a preprocessor config (sources/local.py).
    Family(
        "ImgclsSpecImageProcessor",
        _defaults(size=_square(224), resample=BILINEAR, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)),
    ),
)

# Processors transformers has for image-classification models that imgcls does not reproduce, and why.
UNSUPPORTED: Mapping[str, str] = MappingProxyType(
    {
        "ImageGPTImageProcessor": "it turns pixels into colour-cluster ids (input_ids), not pixel values",
        "Siglip2ImageProcessor": "it cuts images into a variable number of patches (NaFlex)",
        "DonutImageProcessor": "it thumbnails, rotates and pads documents",
        "Gemma3ImageProcessor": "it pans and scans into several crops",
        "TextNetImageProcessor": "it rounds sizes to a size_divisor",
        "TimmWrapperImageProcessor": "its steps are timm's transforms (pretrained_cfg)",
        "PPLCNetImageProcessor": "transformers has it for torchvision only",
    }
)

_BY_NAME: Mapping[str, Family] = MappingProxyType({family.processor: family for family in FAMILIES})
_BY_MODEL_TYPE: Mapping[str, str] = MappingProxyType(
    {model: family.processor for family in FAMILIES for model in family.models}
)

_SPEC_HINT = "serve it with a custom model spec (a YAML file that states resize, crop, mean and std)"


def processor_name(config: Mapping[str, Any], model_type: str | None = None) -> str | None:
    """The image processor class a config names, legacy and backend suffixes removed; None when it names none."""
    name = config.get("image_processor_type") or config.get("feature_extractor_type")
    if not name:
        return _BY_MODEL_TYPE.get(model_type or "")
    name = str(name)
    for suffix in ("Fast", "Pil"):
        name = name.removesuffix(suffix)
    return name.replace("FeatureExtractor", "ImageProcessor")


def processor_for_model_type(model_type: str | None) -> str | None:
    """The processor transformers' AutoImageProcessor picks for a config.json model_type, when imgcls has it."""
    return _BY_MODEL_TYPE.get(model_type or "")


def family_for(name: str | None) -> Family:
    """The family of a processor name; InvalidInputError naming it when imgcls does not reproduce it."""
    if name is None:
        raise InvalidInputError(
            "the preprocessor config names no image_processor_type (nor feature_extractor_type, nor a known "
            f"model_type in config.json), so its preprocessing is unknown; add one or {_SPEC_HINT}"
        )
    family = _BY_NAME.get(name)
    if family is not None:
        return family
    why = UNSUPPORTED.get(name)
    reason = f": {why}" if why else ""
    known = ", ".join(sorted(_BY_NAME.keys() - {"ImgclsSpecImageProcessor"}))
    raise InvalidInputError(
        f"image processor {brief(name)} is not one imgcls reproduces{reason}; {_SPEC_HINT}. Reproduced: {known}"
    )


def resolve(config: Mapping[str, Any]) -> tuple[Family, dict[str, Any]]:
    """A config's family and its settings: the family's defaults with the config over them.

    A null value stays null, as in transformers (which refuses it where a step needs it). InvalidInputError
    for an unknown processor, a key that means code of its own (auto_map), or a key the family reads at a
    value imgcls does not implement.
    """
    family = family_for(processor_name(config))
    for key in FOREIGN_KEYS & config.keys():
        raise InvalidInputError(
            f"the preprocessor config has {key}: its preprocessing is code of its own; {_SPEC_HINT}"
        )
    settings = dict(family.defaults)
    for key, value in config.items():
        if key in INERT_VALUES:
            if not any(value is inert or value == inert for inert in INERT_VALUES[key]):
                raise InvalidInputError(
                    f"{family.processor}: {key} {brief(value)} changes the result and imgcls does not implement it; "
                    f"{_SPEC_HINT}"
                )
        elif key in family.keys:
            settings[key] = value  # null too: transformers keeps it, and refuses it where a step needs it
        # Any other key is one this processor class never reads (transformers ignores it too).
    return family, settings


def overridable_for(family: Family) -> frozenset[str]:
    """The keys a request may override for a model of this family."""
    return family.keys - {"default_to_square", "do_convert_rgb", "channel_order", "input_layout"}
