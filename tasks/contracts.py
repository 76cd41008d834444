"""What the steps of a request hand each other, as typed models (their JSON schema comes with
them: ``RequestPlan.model_json_schema()``), validated where they are made and where they are
read back (the training summary from the adapter folder a retried run finds)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from forgetting.schema import Strict


class StartFailed(Strict):
    """A request that cannot start (it failed validation): the ledger says why."""

    status: Literal["failed"] = "failed"
    error: str


class RequestPlan(Strict):
    """What a request builds on, fixed at its first attempt (``start_request``)."""

    status: Literal["running"] = "running"
    parent: int = Field(description="the model version it builds on")
    forget: list[int] = Field(description="class indices of this request")
    earlier: list[int] = Field(description="class indices forgotten by the parent's chain")
    earlier_names: list[str]
    classes: list[str]
    shots: int | None
    method: str
    dataset_version: str
    index: int = Field(ge=0, description="adapters below the parent: its place in a sequence")
    image_shape: list[int]

    @property
    def gone(self) -> list[str]:
        """Every class forgotten once this request is done."""
        return self.earlier_names + self.classes


class TrainingSummary(Strict):
    """An adapter's training, stored beside it as ``training.json`` (``train_adapter``)."""

    adapter_sha256: str
    kept_groups: list[int]
    group_norms: dict[int, float]
    selected_epoch: int
    selected_weights: Literal["raw", "ema"]
    train_seconds: float
    trainable_params: int
    total_params: int
    adapter_bytes: int
    model_bytes: int
    val: dict
    history: list[dict]
    method: str | None = None  # absent in summaries written before methods were modules
    # FG-OrIU: each subspace's rank per block
    subspace_dims: dict[str, list[int]] | None = None
