"""A release bundle, read without torch: the one artifact serving needs (models/release.py writes it).

A bundle is a folder named by its id:
    bundle.json     what the model is and how to serve it: classes, paradigm and heads, the eval
                    transform, the top-2 rule, the OOD scorer with its thresholds, the rule each
                    binary task is answered by (`tasks`), the exporter, provenance; `files`
                    {name: sha256} and `id`
    model.onnx      images (N, 3, crop, crop) float32 -> logits (N, C), features (N, D)
    detectors.npz   the fitted OOD detectors' arrays, `<detector>.<name>` (no pickled objects)
    MODEL_CARD.md   intended use, data, figures, known limits

The id is `bundle_id`: the first 16 hex digits of a sha256 over the sorted `name:sha256` lines of
every file plus one line for bundle.json's own content (everything but `id`, `files` and `release`,
as canonical JSON). So the same checkpoint released twice has the same id, and a changed
threshold or class list changes it as surely as a changed weight. `release` (which machine and
commit ran the release, and its export check) is informational and outside the id.

`Bundle.load(DIR)` verifies every file and the id before anything is used: a missing, truncated or
changed file is one `BundleError` line naming it. `python -m pipeline.bundle DIR` does the same
check from a shell (exit 2 and one `error:` line when it fails).
"""
from __future__ import annotations

import hashlib
import json
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.images import content_hash

FORMAT = 1
MANIFEST = "bundle.json"
MODEL = "model.onnx"
DETECTORS = "detectors.npz"
CARD = "MODEL_CARD.md"
FILES = (MODEL, DETECTORS, CARD)
UNHASHED = ("id", "files", "release")  # bundle.json keys outside its content line


class BundleError(ValueError):
    """A bundle that cannot be used: the message (one line) names the file and why."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical(data) -> bytes:
    """One byte string per JSON value: sorted keys, no spaces, plain ASCII."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def bundle_id(files: dict[str, str], manifest: dict) -> str:
    """The id of a bundle with these file hashes and this bundle.json (module doc)."""
    content = {k: v for k, v in manifest.items() if k not in UNHASHED}
    lines = sorted(f"{name}:{digest}" for name, digest in files.items())
    lines.append(f"{MANIFEST}:{sha256_bytes(canonical(content))}")
    return sha256_bytes("\n".join(lines).encode())[:16]


@dataclass
class Bundle:
    path: Path
    manifest: dict
    arrays: dict[str, np.ndarray]  # detectors.npz: "<detector>.<name>" -> array

    @classmethod
    def load(cls, path: str | Path) -> "Bundle":
        """Read and verify the bundle in folder `path` (module doc); BundleError when it fails."""
        path = Path(path)
        manifest = _manifest(path / MANIFEST)
        files = manifest.get("files")
        if not isinstance(files, dict) or set(files) != set(FILES):
            raise BundleError(f"{path / MANIFEST}: lists files {sorted(files or [])}, expected {sorted(FILES)}")
        for name, expected in sorted(files.items()):
            file = path / name
            if not file.is_file():
                raise BundleError(f"{file}: missing from the bundle")
            if content_hash(file) != expected:
                raise BundleError(f"{file}: sha256 differs from {MANIFEST} (the file was changed or truncated)")
        if bundle_id(files, manifest) != manifest.get("id"):
            raise BundleError(f"{path / MANIFEST}: its content does not give its id {manifest.get('id')} "
                              f"(bundle.json was edited)")
        try:
            with np.load(path / DETECTORS, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise BundleError(f"{path / DETECTORS}: not a readable npz of plain arrays ({e})") from None
        return cls(path, manifest, arrays)

    @property
    def id(self) -> str:
        return self.manifest["id"]

    @property
    def model_file(self) -> Path:
        return self.path / MODEL

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["paradigm"]["classes"])

    @property
    def default_scorer(self) -> str:
        return self.manifest["ood"]["default"]

    def threshold(self, scorer: str | None = None) -> float:
        """The OOD threshold of `scorer` (default: the bundle's) at the bundle's TPR on val."""
        return float(self.manifest["ood"]["thresholds"][scorer or self.default_scorer])

    def detector(self, name: str) -> dict:
        """One fitted detector: its scalar parameters (bundle.json) and its arrays (detectors.npz)."""
        params = dict(self.manifest["ood"]["detectors"][name])
        prefix = f"{name}."
        params.update({k[len(prefix):]: v for k, v in self.arrays.items() if k.startswith(prefix)})
        return params


def _manifest(file: Path) -> dict:
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        raise BundleError(f"{file}: missing (not a bundle folder)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{file}: not readable JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BundleError(f"{file}: not a bundle manifest of format {FORMAT}")
    return data


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m pipeline.bundle DIR  (verify a release bundle; print its id and model)", file=sys.stderr)
        return 2
    try:
        b = Bundle.load(argv[0])
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"id": b.id, "name": b.manifest["name"], "exporter": b.manifest["export"]["exporter"],
                      "ood_scorer": b.default_scorer, "ood_threshold": b.threshold(), "verified": True}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
