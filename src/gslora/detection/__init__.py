"""Continual forgetting for DETR-family detectors: COCO data, the detector, GS-LoRA(++) and mAP."""

from gslora.detection.data import (
    DetectionDataConfig,
    DetectionDataset,
    DetectionSet,
    compose_scenes,
    load_coco,
    load_detection_dataset,
    write_coco,
)
from gslora.detection.engine import (
    DetectionForgetConfig,
    DetectionPretrainConfig,
    evaluate_detector,
    pretrain_detector,
    request_subsets,
    run_detection_forgetting,
    run_detector_pretraining,
)
from gslora.detection.gs_lora import DetectionGSLoRA, DetectionGSLoRAConfig, DetectionGSLoRAPP
from gslora.detection.metrics import detect, detection_metrics, per_class_ap
from gslora.detection.model import Detector, DetectorConfig, build_detector, load_detector, save_detector

__all__ = ["DetectionDataConfig", "DetectionDataset", "DetectionForgetConfig", "DetectionPretrainConfig",
           "DetectionGSLoRA", "DetectionGSLoRAConfig", "DetectionGSLoRAPP", "DetectionSet", "Detector",
           "DetectorConfig", "build_detector", "compose_scenes", "detect", "detection_metrics", "evaluate_detector",
           "load_coco", "load_detection_dataset", "load_detector", "per_class_ap", "pretrain_detector",
           "request_subsets", "run_detection_forgetting", "run_detector_pretraining", "save_detector", "write_coco"]
