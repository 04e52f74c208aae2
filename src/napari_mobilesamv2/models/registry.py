"""The weights files MobileSAMv2 uses: where they come from and how to check them.

Facts (URLs, sizes, sha256) come from the official releases. Where no hash is
published the first download is pinned (trust on first use, see :mod:`.download`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WeightFile:
    """One downloadable weights file.

    Attributes
    ----------
    name : str
        File name in the cache directory (also the registry key).
    slot : str
        What the file provides: ``"encoder"``, ``"decoder"`` or ``"detector"``.
    urls : tuple of str
        Download locations, tried in order. ``gdrive:<id>`` means a Google Drive file id.
    size : int or None
        Size in bytes where published.
    sha256 : str or None
        Published sha256; ``None`` means the first download is pinned.
    pickled : bool
        True when the file is a full pickle (not a plain state dict) and so can run code.
    description : str
        One line for ``models list``.
    """

    name: str
    slot: str
    urls: tuple[str, ...]
    size: int | None
    sha256: str | None
    pickled: bool = False
    description: str = ""


_SAM = "https://dl.fbaipublicfiles.com/segment_anything/"
_MOBILESAM = "https://github.com/ChaoningZhang/MobileSAM/raw/master/"

WEIGHT_FILES: dict[str, WeightFile] = {
    f.name: f
    for f in (
        WeightFile(
            "sam_vit_h_4b8939.pth", "encoder", (_SAM + "sam_vit_h_4b8939.pth",),
            2_564_550_879, "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
            description="SAM ViT-H (image encoder used; best quality, slowest)",
        ),
        WeightFile(
            "sam_vit_l_0b3195.pth", "encoder", (_SAM + "sam_vit_l_0b3195.pth",),
            1_249_524_607, "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
            description="SAM ViT-L image encoder",
        ),
        WeightFile(
            "sam_vit_b_01ec64.pth", "encoder", (_SAM + "sam_vit_b_01ec64.pth",),
            375_042_383, "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
            description="SAM ViT-B image encoder",
        ),
        WeightFile(
            "mobile_sam.pt", "encoder", (_MOBILESAM + "weights/mobile_sam.pt",),
            40_728_226, "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
            description="MobileSAM TinyViT image encoder (fast on CPU)",
        ),
        WeightFile(
            "l2.pt", "encoder",
            (
                "gdrive:10Emd1k9obcXZZALiqlW8FLIYZTfLs-xu",
                # Probably the same weights; not verified, so it is only a fallback.
                "https://huggingface.co/mit-han-lab/efficientvit-sam/resolve/main/efficientvit_sam_l2.pt",
            ),
            None, None,
            description="EfficientViT-L2 SAM image encoder (MobileSAMv2 default)",
        ),
        WeightFile(
            "Prompt_guided_Mask_Decoder.pt", "decoder",
            (_MOBILESAM + "MobileSAMv2/PromptGuidedDecoder/Prompt_guided_Mask_Decoder.pt",),
            None, None,
            description="MobileSAMv2 prompt encoder + mask decoder",
        ),
        WeightFile(
            "ObjectAwareModel.pt", "detector",
            (
                "https://huggingface.co/RogerQi/MobileSAMV2/resolve/main/ObjectAwareModel.pt",
                "gdrive:1_vb_0SHBUnQhtg5SEE24kOog9_5Qpk5Z",
            ),
            None, None, pickled=True,
            description="MobileSAMv2 object-aware box detector (YOLOv8, Ultralytics 8.0.120 pickle)",
        ),
    )
}

#: Image encoder name -> default weights file.
ENCODER_FILES: dict[str, str] = {
    "efficientvit_l2": "l2.pt",
    "tiny_vit": "mobile_sam.pt",
    "vit_h": "sam_vit_h_4b8939.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_b": "sam_vit_b_01ec64.pth",
}
DECODER_FILE = "Prompt_guided_Mask_Decoder.pt"
DETECTOR_FILE = "ObjectAwareModel.pt"
DEFAULT_ENCODER = "efficientvit_l2"
ENCODERS: tuple[str, ...] = tuple(ENCODER_FILES)


def weight_file(name: str) -> WeightFile:
    """Return the registry entry called `name`, with a helpful error for unknown names."""
    try:
        return WEIGHT_FILES[name]
    except KeyError:
        known = ", ".join(WEIGHT_FILES)
        raise KeyError(f"unknown weights file {name!r}; known files: {known}") from None


def human_url(url: str) -> str:
    """Turn a registry URL into one a person can open in a browser."""
    if url.startswith("gdrive:"):
        return f"https://drive.google.com/uc?id={url.removeprefix('gdrive:')}"
    return url


def default_weight_set(encoder: str = DEFAULT_ENCODER) -> tuple[str, ...]:
    """The files a run with `encoder` needs: its image encoder, the decoder and the detector."""
    return ENCODER_FILES[encoder], DECODER_FILE, DETECTOR_FILE
