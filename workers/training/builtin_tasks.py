"""The three built-in templates as tasks on the same contract as a consumer's own code
(task.py): their networks stay in nets.py, their data in data.py, their parameter schemas
in catalogue.json, and they train bit for bit as before (tests/test_replay.py)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import data, nets
from .task import Task


class TemplateTask(Task):
    """A template: data.load for the splits, nets.build for the network and its loss."""

    template = ""
    metric = "accuracy"

    def datasets(self) -> tuple[Any, Any]:
        self.splits = data.load(self.template, self.dataset, self.params)
        return ((self.splits.x_train, self.splits.y_train),
                (self.splits.x_test, self.splits.y_test))

    def build_model(self) -> nn.Module:
        model, self.loss_fn = nets.build(self.template, self.params, self.splits)
        return model

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        return self.loss_fn(model(x), y)

    def evaluate(self, model: nn.Module, held_out: Any, device: torch.device) -> dict[str, float]:
        name, value = nets.evaluate(self.template, model, self.splits, device)
        return {name: value}


class TabularClassifier(TemplateTask):
    template = "tabular-classifier"


class ImageClassifier(TemplateTask):
    template = "image-classifier"


class LoadForecast(TemplateTask):
    template = "load-forecast"
    metric = "mape"


TEMPLATES: dict[str, type[Task]] = {
    cls.template: cls for cls in (TabularClassifier, ImageClassifier, LoadForecast)}
