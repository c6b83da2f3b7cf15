"""What every tab shares: the context the page is built over, field-bound controls and error text.

Controls are bound to request fields by name (`Fields`), so a handler receives one dict of values
and builds a typed request from it; nothing depends on the order of a component list.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
from pydantic import ValidationError

from modules.app.short_errors import short_message
from modules.service.catalog import Catalog
from modules.service.failures import MODEL_FILE_ERRORS, QueueFullError
from modules.service.generation_service import GenerationService
from modules.service.settings_store import SettingsStore

log = logging.getLogger("ui")

# Failures a user can act on; they become a message on the page, never a traceback.
USER_ERRORS = (ValidationError, *MODEL_FILE_ERRORS, QueueFullError, ValueError, KeyError)


@dataclass
class UiContext:
    """What the page is built over: one service (its catalog of choices, saved settings) and the flags."""

    service: GenerationService
    args: argparse.Namespace | None = None

    @property
    def catalog(self) -> Catalog:
        return self.service.catalog

    @property
    def settings(self) -> SettingsStore:
        return self.service.settings


@dataclass
class Fields:
    """Components bound to request fields by name."""

    components: dict[str, gr.components.Component] = field(default_factory=dict)

    def __getitem__(self, name: str) -> gr.components.Component:
        return self.components[name]

    def add(self, name: str, component: gr.components.Component) -> gr.components.Component:
        self.components[name] = component
        return component

    def merge(self, other: "Fields") -> "Fields":
        return Fields({**self.components, **other.components})

    @property
    def inputs(self) -> set[gr.components.Component]:
        return set(self.components.values())

    def values(self, values: Mapping[gr.components.Component, Any]) -> dict[str, Any]:
        """Field name -> value, from the dict Gradio passes to a handler with set inputs."""
        return {name: values[component] for name, component in self.components.items() if component in values}

    def updates(self, fields: Mapping[str, Any]) -> dict[gr.components.Component, Any]:
        """Output dict that sets the given fields (unknown names are left out)."""
        return {self.components[name]: value for name, value in fields.items() if name in self.components}


def validation_message(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg']}" for e in error.errors())


def refusal(message: str) -> gr.Error:
    """A gr.Error to raise for input the user can correct: one log line, no traceback (Gradio prints
    one for every gr.Error unless told not to, and a log full of them hides the real failures). Long
    quoted values are cut, as in the API's answers."""
    message = short_message(message)
    log.info("Refused: %s", message)
    return gr.Error(message, print_exception=False)


def user_error(error: BaseException) -> gr.Error:
    """A gr.Error to raise with a message the user can act on."""
    if isinstance(error, ValidationError):
        return refusal(validation_message(error))
    if isinstance(error, KeyError):
        return refusal(str(error.args[0]) if error.args else "unknown name")
    return refusal(str(error))
