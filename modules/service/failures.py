"""The failures the service reports, sorted by whose they are to fix, for the UI and the API to word.

The app layer catches these types from here and never imports the layers that raise them.
"""

from __future__ import annotations

from modules.models.devices import is_out_of_memory
from modules.models.safe_load import ModelFileError
from modules.pipeline.vae_codec import NonFiniteImageError
from modules.service.job_queue import JobCancelled, JobIdInUseError, QueueFullError
from modules.service.model_manager import NoCheckpointError, UnknownCheckpointError

# A checkpoint that is missing or unreadable: the user adds or replaces a file.
MODEL_FILE_ERRORS = (NoCheckpointError, ModelFileError)

__all__ = ["MODEL_FILE_ERRORS", "JobCancelled", "JobIdInUseError", "ModelFileError", "NoCheckpointError",
           "NonFiniteImageError", "QueueFullError", "UnknownCheckpointError", "is_out_of_memory"]
