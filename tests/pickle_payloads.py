"""A pickle that runs code when loaded without restrictions: the loaders must refuse it unrun."""

import os


class WritesCanary:
    """Unpickling it creates the file `canary`: its existence afterwards proves code ran."""

    def __init__(self, canary):
        self.canary = str(canary)

    def __reduce__(self):
        return (os.system, (f"touch {self.canary}",))
