"""The Image Generation node's contract, shared by producer and worker:
node JSON and its validation, the model catalog, the result schema, settings."""

from contract.catalog import ModelCatalog, ModelEntry, SizeOption, load_catalog
from contract.node import ImageGenerationNode, NodeValidationError, Problem, validate_node
from contract.result import ErrorRecord, ImageRecord, JobResult
from contract.settings import Settings, get_settings

__all__ = [
    "ErrorRecord",
    "ImageGenerationNode",
    "ImageRecord",
    "JobResult",
    "ModelCatalog",
    "ModelEntry",
    "NodeValidationError",
    "Problem",
    "Settings",
    "SizeOption",
    "get_settings",
    "load_catalog",
    "validate_node",
]
