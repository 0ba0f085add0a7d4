"""Download official SAM / MedSAM checkpoints, verified by sha256 before they are kept."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.fm.checkpoints import file_sha256
from store.errors import InvalidInput, MedloopError


@dataclass(frozen=True)
class OfficialWeights:
    kind: str
    filename: str
    url: str | None  # None: no stable direct link; the user downloads and passes --url
    sha256: str | None  # None: not known here; the user passes --sha256
    source: str


OFFICIAL_WEIGHTS: dict[str, OfficialWeights] = {
    "sam_vit_b": OfficialWeights(
        kind="sam_vit_b",
        filename="sam_vit_b_01ec64.pth",
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        source="https://github.com/facebookresearch/segment-anything#model-checkpoints",
    ),
    "medsam_vit_b": OfficialWeights(
        kind="medsam_vit_b",
        filename="medsam_vit_b.pth",
        url=None,
        sha256=None,
        source="https://github.com/bowang-lab/MedSAM (checkpoint shared via Google Drive)",
    ),
}


def fetch_weights(
    name: str,
    dest_dir: str | Path,
    url: str | None = None,
    sha256: str | None = None,
    progress: Callable[[int, int | None], None] | None = None,
) -> Path:
    """Download checkpoint `name` into `dest_dir` and return its path.

    The file is streamed to a temporary file in `dest_dir`, its sha256 checked against
    `sha256` (or the official one), and only then renamed into place; a failed download
    or a wrong sha256 leaves nothing behind. An existing file with the right sha256 is
    kept without downloading. `progress(done_bytes, total_bytes_or_None)` is called as
    bytes arrive.
    """
    official = OFFICIAL_WEIGHTS.get(name)
    if official is None and url is None:
        raise InvalidInput(
            f"unknown weights {name!r}; use one of {', '.join(OFFICIAL_WEIGHTS)} or give --url"
        )
    url = url or (official.url if official else None)
    if url is None:
        raise InvalidInput(
            f"{name} has no direct download address; download it from {official.source}, "
            "then pass --url file:///path/to/the/file and --sha256"
        )
    expected = (sha256 or (official.sha256 if official else None) or "").strip().lower()
    if not expected:
        raise InvalidInput(
            f"no known sha256 for {name}; pass --sha256 with the checksum its publisher gives"
        )
    if official is not None:
        filename = official.filename
    else:
        filename = Path(urllib.parse.urlparse(url).path).name or f"{name}.pth"
    dest_dir = Path(dest_dir).expanduser()
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / filename
    if target.is_file() and file_sha256(target) == expected:
        return target

    handle = tempfile.NamedTemporaryFile(dir=dest_dir, prefix=f".{filename}.", suffix=".part",
                                         delete=False)
    tmp = Path(handle.name)
    try:
        digest = hashlib.sha256()
        with handle, urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310
            total = response.headers.get("Content-Length")
            total = int(total) if total else None
            done = 0
            while block := response.read(1 << 20):
                handle.write(block)
                digest.update(block)
                done += len(block)
                if progress is not None:
                    progress(done, total)
            handle.flush()
            os.fsync(handle.fileno())
        actual = digest.hexdigest()
        if actual != expected:
            raise InvalidInput(
                f"{url} downloaded with sha256 {actual}, expected {expected}; nothing was "
                "kept: check the address and the checksum"
            )
        os.replace(tmp, target)
        return target
    except (urllib.error.URLError, OSError) as exc:
        raise MedloopError(
            f"could not download {name} from {url} ({exc}); download it by hand and set "
            "MEDLOOP_FM_CHECKPOINT to its path"
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)
