"""The base of every config and contract model: unknown keys are errors, so a typo in
``params.yaml`` or a request file names the field instead of falling back to a default."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
