"""What a deployment file must be before a runtime predictor uses it: a non-empty file of its format
(`require_export`, `loading`), the graph of its role (`check_role`, `check_inputs`), of one export with its partner
(`check_pair`) and unchanged since export (`check_sidecar`, against the sha256 its sidecar lists). No PyTorch."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from ..files import sha256_path
from .interface import static_shapes


class ExportFileError(ValueError):
    """A deployment file that is not what it claims: a folder, empty or truncated, another graph, the other role,
    another export's, or changed after export. The message names the file, what is wrong and the fix."""


def require_export(path: str | os.PathLike, fmt: str) -> Path:
    """`path` when it is a non-empty file; else an error naming it, what it is and the export that writes it."""
    p = Path(path)
    if p.is_dir():
        raise ExportFileError(
            f"{path} is a folder, not a {fmt} graph file: pass the encoder and decoder files inside the folder "
            f"`mobilesam export CHECKPOINT --out DIR --format {fmt}` wrote"
        )
    if not p.is_file():
        raise FileNotFoundError(
            f"{path} does not exist; write it with `mobilesam export CHECKPOINT --out DIR --format {fmt}`"
        )
    if p.stat().st_size == 0:
        raise ExportFileError(
            f"{path} is empty (0 bytes): a copy or download was cut short; copy it again or re-export"
        )
    return p


@contextmanager
def loading(path: str | os.PathLike, runtime: str) -> Iterator[None]:
    """Turns the runtime's own load failure into one `ExportFileError` naming the file (the runtime's error stays
    its `__cause__`, shown with `--debug`)."""
    try:
        yield
    except (ImportError, ExportFileError, FileNotFoundError):
        raise
    except Exception as e:
        raise ExportFileError(
            f"{runtime} could not load {path} ({type(e).__name__}; --debug shows its words): the file is truncated, "
            "damaged or not of this format; copy it again or re-export"
        ) from e


def check_role(path: str | os.PathLike, role: str, inputs: object, expected: Mapping[str, object]) -> None:
    """Refuses a graph whose inputs (names, or their count where the runtime has no names) are not the `role`'s of
    `expected` (role -> inputs): the other role's means the encoder and decoder were swapped."""
    if inputs == expected[role]:
        return
    other = next(r for r in expected if r != role)
    if inputs == expected[other]:
        raise ExportFileError(
            f"{path} is the {other} of an export, not its {role}: the encoder and the decoder are swapped; pass the "
            "encoder first (load_predictor(encoder, decoder))"
        )
    raise ExportFileError(
        f"{path} takes inputs {inputs}, not the {role}'s {expected[role]}: it is not a graph `mobilesam export` "
        "wrote; pass the files of a mobilesam export"
    )


SIDECAR_MAX_BYTES = 1 << 24  # a sidecar is a few kB; larger JSON files beside the graphs are not sidecars


def sidecar_of(path: str | os.PathLike) -> tuple[Path, dict[str, str]] | None:
    """(the sidecar, its `files`: relative name -> sha256) of the export `path` belongs to: a JSON file beside it
    whose `files` lists its name (`mobile_sam.json`); None when there is none."""
    p = Path(path)
    for candidate in sorted(p.parent.glob("*.json")):
        try:
            if candidate.stat().st_size > SIDECAR_MAX_BYTES:
                continue
            meta = json.loads(candidate.read_text())
        except (OSError, ValueError):
            continue
        files = meta.get("files") if isinstance(meta, dict) else None
        if isinstance(files, dict) and p.name in files:
            return candidate, files
    return None


def check_sidecar(encoder_path: str | os.PathLike, decoder_path: str | os.PathLike) -> None:
    """Against the export's sidecar, where one sits beside a file: each file (and its companions, OpenVINO's `.bin`)
    has the sha256 the sidecar lists, and the other file of the pair is one of that export's files."""
    digests: dict[Path, str] = {}

    def digest(p: Path) -> str:
        if p not in digests:
            digests[p] = sha256_path(p)
        return digests[p]

    pair = (Path(encoder_path), Path(decoder_path))
    for path, other in (pair, pair[::-1]):
        found = sidecar_of(path)
        if found is None:
            continue
        sidecar, files = found
        for name in [n for n in files if Path(n).stem == path.stem and (path.parent / n).exists()]:
            if digest(path.parent / name) != files[name]:
                raise ExportFileError(
                    f"{path.parent / name} changed after export: its sha256 is not the one {sidecar} lists; "
                    "restore the file or export again"
                )
        if digest(other) not in files.values():
            raise ExportFileError(
                f"{encoder_path} and {decoder_path} come from two different exports: {other} is not among the "
                f"files {sidecar} lists for {path}'s export; use the encoder and decoder of one export"
            )


def check_pair(
    encoder_path: str | os.PathLike,
    decoder_path: str | os.PathLike,
    encoder: Mapping[str, object],
    decoder: Mapping[str, object],
) -> str:
    """Refuses an encoder and a decoder of two exports: what both files say about themselves (img_size, and
    precision where the files record it) must agree, and where the export's sidecar sits beside them, their
    sha256 (`check_sidecar`). Returns the pair's identity, which the predictor's embeddings carry."""
    for key in [k for k in encoder if k in decoder]:
        if encoder[key] != decoder[key]:
            raise ExportFileError(
                f"{encoder_path} was exported for {key}={encoder[key]} but {decoder_path} for {key}={decoder[key]}; "
                "use the two files of one export"
            )
    check_sidecar(encoder_path, decoder_path)
    return f"{Path(encoder_path).resolve()} (img_size {encoder.get('img_size')})"


def check_inputs(
    path: str | os.PathLike,
    role: str,
    inputs: Mapping[str, tuple[int, ...]],
    img_size: int,
    max_points: int,
    batch: int = 1,
) -> None:
    """Refuses a static graph whose inputs (name -> shape) are not the interface's for its img_size and max_points."""
    want, _ = static_shapes(role, img_size, max_points, batch)
    if dict(inputs) != want:
        raise ExportFileError(
            f"{path} takes inputs {dict(inputs)}, not {want} (the {role} of img_size={img_size}, "
            f"max_points={max_points}): export it again"
        )
