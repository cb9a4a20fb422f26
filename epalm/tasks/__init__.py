"""Tasks and metrics: captioning and (video) question answering.

Training targets, batch collation, cleaning generated text, VQA accuracy (the official rules),
caption metrics (pycocoevalcap) and predictions in the COCO results format.
"""

from epalm._lazy import lazy_exports

_EXPORTS = {
    "Collator": "epalm.tasks.collate",
    "is_empty": "epalm.tasks.collate",
    "model_inputs": "epalm.tasks.collate",
    "caption_target": "epalm.tasks.caption",
    "clean_caption": "epalm.tasks.caption",
    "normalize_answer": "epalm.tasks.vqa",
    "majority_answer": "epalm.tasks.vqa",
    "training_target": "epalm.tasks.vqa",
    "unanswerable_questions": "epalm.tasks.vqa",
    "vqa_accuracy": "epalm.tasks.vqa",
    "exact_match": "epalm.tasks.vqa",
    "clean_answer": "epalm.tasks.vqa",
    "vqa_scores": "epalm.tasks.vqa",
    "caption_scores": "epalm.tasks.cococaption",
    "java_available": "epalm.tasks.cococaption",
    "official_id": "epalm.tasks.predictions",
    "write_predictions": "epalm.tasks.predictions",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
