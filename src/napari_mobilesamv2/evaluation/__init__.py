"""How good are the objects? Compare predictions with the user's own ground truth.

* :func:`match_labels`: instance matching of a predicted label image against a
  ground-truth label image at IoU thresholds 0.5 to 0.95 (precision, recall, F1,
  average precision, mean matched IoU, panoptic quality), following stardist's
  conventions; :func:`aggregate_matching` combines several image pairs.
* :func:`proposal_recall`: mask AR@K of object proposals (COCO results) as in the
  MobileSAMv2 paper, computed with pycocotools, and box recall at IoU 0.5.
* :func:`evaluate_label_files`, :func:`evaluate_proposal_files`: the same for files,
  paired by name; :func:`write_evaluation` writes the results as JSON.
"""

from .files import (
    FileEvaluation,
    evaluate_label_files,
    evaluate_proposal_files,
    pair_files,
    write_evaluation,
)
from .matching import (
    DEFAULT_IOU_THRESHOLDS,
    IOU_THRESHOLDS_HELP,
    MatchingResult,
    MatchStats,
    PairwiseIoU,
    aggregate_matching,
    match_labels,
    pairwise_iou,
)
from .proposals import DEFAULT_KS, ProposalRecall, box_recall, labels_to_coco, proposal_recall, read_proposals

__all__ = [
    "DEFAULT_IOU_THRESHOLDS", "DEFAULT_KS", "FileEvaluation", "IOU_THRESHOLDS_HELP", "MatchStats", "MatchingResult", "PairwiseIoU",
    "ProposalRecall", "aggregate_matching", "box_recall", "evaluate_label_files", "evaluate_proposal_files",
    "labels_to_coco", "match_labels", "pair_files", "pairwise_iou", "proposal_recall", "read_proposals",
    "write_evaluation",
]
