"""The failures the service reports, sorted by whose they are to fix, for the UI and the API to word.

The app layer catches these types from here and never imports the layers that raise them.
"""

from __future__ import annotations

from modules.models.devices import is_out_of_memory
from modules.models.safe_load import ModelFileError
from modules.pipeline.hooks import HookFailed
from modules.pipeline.vae_codec import NonFiniteImageError
from modules.service.jobs import JobCancelled, JobIdInUseError, QueueFullError
from modules.service.model_manager import NoCheckpointError, UnknownCheckpointError

# A checkpoint that is missing or unreadable: the user adds or replaces a file.
MODEL_FILE_ERRORS = (NoCheckpointError, ModelFileError)

# Failures of the server's side whose message says what went wrong (a hook that raised names itself and
# its point; an image that decoded to NaN says so): shown as they are, where others say "internal error".
SELF_EXPLAINING_FAILURES = (HookFailed, NonFiniteImageError)

__all__ = ["MODEL_FILE_ERRORS", "SELF_EXPLAINING_FAILURES", "HookFailed", "JobCancelled", "JobIdInUseError", "ModelFileError", "NoCheckpointError",
           "NonFiniteImageError", "QueueFullError", "UnknownCheckpointError", "is_out_of_memory"]
