"""The detector instances a flow process uses, per model version and per key."""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

from detectors import get_detector

__all__ = ["Models", "TENANT_PREFIX"]

#: model versions of a tenant's own detector (tenant registry ``detector`` /
#: ``detector_params``): ``tenant:<id>:<JSON [name, parameters]>``
TENANT_PREFIX = "tenant:"


class Models:
    """Detector instances per model version (derived, never snapshotted).

    Artifacts are immutable per version, so re-fetching after a restart gives the same
    detector. ``BUILTIN`` is the configured detector with its configured parameters.
    An artifact may hold per-key models (``keys[sensor_id]``, from ``adctl retrain``):
    a sensor with one gets a detector of its own (LRU-cached), the others the
    artifact's pooled top-level model.

    Args:
        name: the configured detector.
        params: its configured parameters.
        per_key_cache: the most per-key detectors kept (least recently used dropped).
    """

    def __init__(self, name: str, params: dict[str, Any], per_key_cache: int = 50_000) -> None:
        self.name = name
        self.params = params
        #: registry digest -> tenant -> its detector version
        self._tenant_versions: dict[str, dict[str, str]] = {}
        self._cache: dict[str, Any] = {}
        self._artifacts: dict[str, dict[str, Any]] = {}
        self._per_key: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._per_key_max = per_key_cache

    def tenant_versions(self, registry: Any) -> dict[str, str]:
        """Tenant -> the version of its own detector, for the tenants of ``registry``
        (a ``state.tenants.Registry``) that set ``detector`` or ``detector_params``;
        the others use the flow's detector (``BUILTIN``). A tenant that sets
        ``detector`` gets that detector with ``detector_params`` alone; one that sets only
        ``detector_params`` gets the flow's detector with them over the flow's.
        """
        got = self._tenant_versions.get(registry.digest)
        if got is not None:
            return got
        got = {}
        for t in registry:
            if t.detector is None and t.detector_params is None:
                continue
            name = t.detector or self.name
            params = (
                dict(t.detector_params or {})
                if t.detector
                else {
                    **self.params,
                    **(t.detector_params or {}),
                }
            )
            # the version names the detector and its parameters, so a snapshot's sensor
            # finds its detector whatever registry the process started with
            text = json.dumps([name, params], sort_keys=True, separators=(",", ":"))
            got[t.id] = f"{TENANT_PREFIX}{t.id}:{text}"
        self._tenant_versions[registry.digest] = got
        return got

    def _build(self, version: str, model: dict[str, Any] | None) -> Any:
        if model is None and version.startswith(TENANT_PREFIX):
            name, params = json.loads(version.split(":", 2)[2])
            return get_detector(name, params)  # a tenant's own detector and parameters
        det = get_detector(self.name, self.params)
        if model is not None:
            det.load_model(model)
            det.model_version = version
        return det

    def get(self, version: str, ref: str | None, key: str | None = None) -> Any:
        """The detector for model ``version`` (fetched from ``ref``), per-key where the model
        has one for ``key``.
        """
        artifact = None
        if ref:
            artifact = self._artifacts.get(version)
            if artifact is None:
                from state.model_store import fetch

                artifact = self._artifacts[version] = fetch(ref)
        keyed = (artifact or {}).get("keys") or {}
        if key is not None and key in keyed:
            det = self._per_key.get((version, key))
            if det is None:
                det = self._per_key[(version, key)] = self._build(version, keyed[key])
                if len(self._per_key) > self._per_key_max:
                    self._per_key.popitem(last=False)
            else:
                self._per_key.move_to_end((version, key))
            return det
        det = self._cache.get(version)
        if det is None:
            det = self._cache[version] = self._build(version, artifact)
        return det
