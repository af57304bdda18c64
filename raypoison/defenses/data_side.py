"""Data-side detectors: which training samples look poisoned, judged with the trained model.

- ``spectral_signatures`` (Tran et al., 2018): per label, the squared projection of each centred
  feature vector on the top singular direction; flags the ``1.5 × expected_rate`` highest of each
  label, the paper's rule with the defender's assumed poison rate.
- ``activation_clustering`` (Chen et al., 2018): per label, features reduced to ``dims``
  principal components and split by 2-means; the smaller cluster is flagged when it holds less
  than ``max_size`` of the label. A sample's score is one minus its cluster's share of its label,
  so members of small clusters rank first whatever their label.
- ``strip`` (Gao et al., 2019): each sample blended half-and-half with ``blends`` random trusted
  images; a backdoored input keeps its prediction whatever it is blended with, so a low mean
  prediction entropy is suspicious. Flags entropies below the ``frr`` quantile of the trusted
  images' own (the false-rejection rate the defender accepts).
- ``deep_knn`` (Peri et al., 2020): a sample whose label is not the plurality among its ``k``
  nearest neighbours in feature space is flagged; the score is the fraction of neighbours with
  another label.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from raypoison.core.host_copy import host_to_device
from raypoison.defenses.base import Defense, Flags, TrainingSet, TrustedSet, features_of
from raypoison.defenses.registry import DEFENSES
from raypoison.errors import ConfigError
from raypoison.models.base import ImageClassifier


def _per_label(labels: torch.Tensor):
    for c in torch.unique(labels).tolist():
        yield c, torch.nonzero(labels == c).flatten()


@DEFENSES.register("spectral_signatures")
class SpectralSignatures(Defense):
    @dataclass(frozen=True)
    class Params:
        expected_rate: float = 0.05

        def validate(self, path: str) -> None:
            if not 0 < self.expected_rate < 1:
                raise ConfigError(f"{path}.expected_rate", "must be in (0, 1)")

    def flag(self, training: TrainingSet, model: ImageClassifier, trusted: TrustedSet,
             seed: int) -> Flags:
        feats = features_of(model, training.images)
        scores = torch.zeros(len(feats), device=feats.device)
        flagged = torch.zeros(len(feats), dtype=torch.bool, device=feats.device)
        for _c, idx in _per_label(training.labels):
            centred = feats[idx] - feats[idx].mean(0)
            _u, _s, v = torch.linalg.svd(centred, full_matrices=False)
            scores[idx] = (centred @ v[0]) ** 2
            n = min(len(idx), int(round(1.5 * self.params.expected_rate * len(idx))))
            flagged[idx[torch.topk(scores[idx], n).indices]] = True
        return Flags(scores, flagged)


def _two_means(x: torch.Tensor, generator: torch.Generator, iterations: int = 30) -> torch.Tensor:
    """Cluster assignment (0/1) of the rows of ``x`` by 2-means with a k-means++ start."""
    first = int(torch.randint(len(x), (1,), generator=generator))
    distance = ((x - x[first]) ** 2).sum(1)
    second = int(torch.multinomial(distance.cpu() + 1e-12, 1, generator=generator))
    centres = torch.stack([x[first], x[second]])
    assign = torch.zeros(len(x), dtype=torch.long, device=x.device)
    for _ in range(iterations):
        assign = torch.cdist(x, centres).argmin(1)
        for k in (0, 1):
            if (assign == k).any():
                centres[k] = x[assign == k].mean(0)
    return assign


@DEFENSES.register("activation_clustering")
class ActivationClustering(Defense):
    @dataclass(frozen=True)
    class Params:
        dims: int = 10
        max_size: float = 0.35

        def validate(self, path: str) -> None:
            if self.dims < 1 or not 0 < self.max_size <= 0.5:
                raise ConfigError(path, "dims must be ≥ 1 and max_size in (0, 0.5]")

    def flag(self, training: TrainingSet, model: ImageClassifier, trusted: TrustedSet,
             seed: int) -> Flags:
        feats = features_of(model, training.images)
        generator = torch.Generator().manual_seed(seed)
        scores = torch.zeros(len(feats), device=feats.device)
        flagged = torch.zeros(len(feats), dtype=torch.bool, device=feats.device)
        for _c, idx in _per_label(training.labels):
            if len(idx) < 4:
                continue
            centred = feats[idx] - feats[idx].mean(0)
            q = min(self.params.dims, *centred.shape)
            _u, _s, v = torch.linalg.svd(centred, full_matrices=False)
            reduced = centred @ v[:q].T
            assign = _two_means(reduced, generator)
            small = int((assign == 1).sum() < (assign == 0).sum())
            share = torch.stack([(assign == k).float().mean() for k in (0, 1)])
            scores[idx] = 1 - share[assign]
            if share[small] < self.params.max_size:
                flagged[idx[assign == small]] = True
        return Flags(scores, flagged)


@torch.no_grad()
def _blend_entropy(model, images: torch.Tensor, overlays: torch.Tensor, blends: int,
                   generator: torch.Generator, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].float() / 255
        total = torch.zeros(len(x), device=x.device)
        for _ in range(blends):
            pick = host_to_device(torch.randint(len(overlays), (len(x),), generator=generator),
                                  x.device)
            probs = F.softmax(model(0.5 * x + 0.5 * overlays[pick].float() / 255), dim=1)
            total += -(probs * probs.clamp_min(1e-12).log()).sum(1)
        out.append(total / blends)
    return torch.cat(out)


@DEFENSES.register("strip")
class Strip(Defense):
    @dataclass(frozen=True)
    class Params:
        blends: int = 8
        frr: float = 0.05

        def validate(self, path: str) -> None:
            if self.blends < 1 or not 0 < self.frr < 1:
                raise ConfigError(path, "blends must be ≥ 1 and frr in (0, 1)")

    def flag(self, training: TrainingSet, model: ImageClassifier, trusted: TrustedSet,
             seed: int) -> Flags:
        generator = torch.Generator().manual_seed(seed)
        reference = _blend_entropy(model, trusted.images, trusted.images, self.params.blends,
                                   generator)
        threshold = torch.quantile(reference, self.params.frr)
        entropy = _blend_entropy(model, training.images, trusted.images, self.params.blends,
                                 generator)
        return Flags(-entropy, entropy < threshold)


@DEFENSES.register("deep_knn")
class DeepKnn(Defense):
    @dataclass(frozen=True)
    class Params:
        k: int = 50

        def validate(self, path: str) -> None:
            if self.k < 1:
                raise ConfigError(f"{path}.k", f"must be ≥ 1, got {self.k}")

    def flag(self, training: TrainingSet, model: ImageClassifier, trusted: TrustedSet,
             seed: int) -> Flags:
        feats = F.normalize(features_of(model, training.images), dim=1)
        labels = training.labels
        k = min(self.params.k, len(feats) - 1)
        classes = int(labels.max()) + 1
        scores = torch.empty(len(feats), device=feats.device)
        flagged = torch.empty(len(feats), dtype=torch.bool, device=feats.device)
        for start in range(0, len(feats), 1024):
            chunk = feats[start:start + 1024]
            distance = torch.cdist(chunk, feats)
            rows = torch.arange(len(chunk), device=feats.device)
            distance[rows, rows + start] = float("inf")  # not its own neighbour
            neighbours = labels[distance.topk(k, largest=False).indices]
            own = labels[start:start + len(chunk)]
            counts = F.one_hot(neighbours, classes).sum(1)
            scores[start:start + len(chunk)] = 1 - (neighbours == own[:, None]).float().mean(1)
            flagged[start:start + len(chunk)] = counts.argmax(1) != own
        return Flags(scores, flagged)
