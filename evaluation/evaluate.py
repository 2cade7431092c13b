"""`evaluate(...)`: the paper's mIoU (the student's masks against the teacher's and against the ground truth, per
prompt type of the protocol in mobilesam/protocol.py) on shards or a labelled dataset, with a report; `run(cfg)` for
scripts/evaluate.py."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import mobilesam
from data.labels import LabelledSet, read_labels
from data.teacher import embed
from mobilesam import Sam
from mobilesam.build import build_from
from mobilesam.checkpoint import open_checkpoint
from mobilesam.device import choose_device
from mobilesam.files import sha256_file
from mobilesam.protocol import PROMPT_TYPES, Decoder, build_prompts, image_ious, protocol_masks
from mobilesam.transforms import normalize

from .records import EvalRecords, LabelledSource, ShardSource, record_loader
from .report import COMPARISONS, Tally, WorstCases, example, protocol_description, summary_table, write_report

log = logging.getLogger(__name__)


def load_model(
    checkpoint: str | os.PathLike, img_size: int | None = None, variant: str = "auto", role: str = "checkpoint"
) -> tuple[Sam, dict[str, Any]]:
    """Any checkpoint (`mobile_sam.pt`, SAM `.pth`, Lightning `.ckpt`; read with `weights_only=True`) -> the model in
    eval mode and its record {"path", "sha256", "img_size", "variant"}.

    Args:
        img_size: the input size, when the file does not say (a file without sidecar is the official 1024).
        variant: "auto" (read from the weights) or the variant the caller expects (a mismatch is refused).
        role: names the option in error messages ("checkpoint", "teacher.checkpoint").
    """
    ckpt = open_checkpoint(checkpoint, img_size, variant, role)
    record = {"path": str(checkpoint), "sha256": sha256_file(checkpoint), "img_size": ckpt.img_size}
    return build_from(ckpt), record | {"variant": ckpt.variant}


class Scorer:
    """Embeds batches of records with the student (and, on labelled data, the teacher) and scores them."""

    def __init__(
        self,
        student: Sam,
        teacher: Sam | None,
        teacher_decoder: Decoder | None,
        device: torch.device,
        precision: str,
        worst: WorstCases,
    ) -> None:
        self.student, self.teacher, self.device, self.precision = student, teacher, device, precision
        self.student_decoder = Decoder(student.prompt_encoder, student.mask_decoder)
        self.teacher_decoder = teacher_decoder or self.student_decoder
        self.teacher_given = teacher_decoder is not None  # else the teacher is not scored against ground truth
        self.img_size = student.image_encoder.img_size
        self.tally, self.worst = Tally(), worst

    @torch.no_grad()
    def embed(self, batch: list[dict[str, Any]]) -> tuple[Tensor, Tensor | None]:
        """Student embeddings of the batch as training computes them (`transforms.normalize` on the zero-padded
        uint8 batch), and the teacher's: stored (shards), computed (labelled data with a teacher), or None."""
        s = self.img_size
        images = torch.zeros(len(batch), 3, s, s, dtype=torch.uint8)
        for i, r in enumerate(batch):
            h, w = r["size"]
            images[i, :, :h, :w] = r["image"]
        sizes = torch.tensor([list(r["size"]) for r in batch], dtype=torch.int64, device=self.device)
        student = self.student.image_encoder(normalize(images.to(self.device), sizes)).float()
        if batch[0]["embedding"] is not None:
            return student, torch.stack([r["embedding"] for r in batch]).to(self.device).float()
        if self.teacher is not None:
            return student, embed(self.teacher, [r["image"] for r in batch], self.precision)
        return student, None

    @torch.no_grad()
    def score(self, batch: list[dict[str, Any]]) -> None:
        student, teacher = self.embed(batch)
        dev, s = self.device, self.img_size
        if teacher is not None:  # the paper's loss, per image: what unlabelled data can still be scored by
            self.tally.embedding_se.append((student - teacher).square().flatten(1).mean(1).cpu())
        for i, r in enumerate(batch):
            ids = r["mask_ids"].tolist()
            if not ids:
                self.tally.add_empty(r["key"])
                continue
            prompts = build_prompts(r["points"].to(dev), r["boxes"].to(dev), r["low"], r["key"], ids, s)
            gt = r["gt"].to(dev)
            t_emb = None if teacher is None else teacher[i : i + 1]
            size = (int(r["size"][0]), int(r["size"][1]))
            ious = image_ious(
                self.student_decoder, student[i : i + 1], prompts, size, s, self.teacher_decoder, t_emb, gt
            )
            if not self.teacher_given:
                ious.pop("teacher_vs_ground_truth", None)
            gt_empty = ~gt.flatten(1).any(1).cpu()
            self.tally.add(r["key"], ious, gt_empty)
            self._examples(r, ious, prompts, student[i : i + 1], t_emb, size)

    def _examples(self, r: dict, ious: dict, prompts: Any, s_emb: Tensor, t_emb: Tensor | None, size: tuple) -> None:
        """Offers this image's worst point-prompt masks (vs the teacher, else vs ground truth) to the grid."""
        reference = "vs_teacher" if "vs_teacher" in ious else "vs_ground_truth"
        values = ious[reference]["point"].cpu()
        order = [int(j) for j in values.argsort()[: self.worst.k] if values[j] < self.worst.threshold()]
        if not order:
            return
        sub = prompts.subset(order)
        masks = {"student": protocol_masks(self.student_decoder, s_emb, sub, "point", size, self.img_size)}
        if t_emb is not None:
            masks["teacher"] = protocol_masks(self.teacher_decoder, t_emb, sub, "point", size, self.img_size)
        masks["ground truth"] = r["gt"][order]
        for row, j in enumerate(order):
            iou, drawn = float(values[j]), {k: m[row] for k, m in masks.items()}
            ex = example(r["image"], drawn, sub.point[row].cpu(), r["key"], int(r["mask_ids"][j]), iou, reference)
            self.worst.add(iou, ex)


def _teacher_for_shards(
    source: ShardSource, teacher_ckpt: str | os.PathLike | None, teacher_variant: str, notes: list[str]
) -> tuple[Decoder | None, dict[str, Any]]:
    """On shards the teacher's embeddings are stored: a teacher checkpoint contributes only its prompt encoder and
    mask decoder (the encoder is dropped). Returns (decoder or None = the student's own, the report's record)."""
    stored = source.manifest["teacher"]
    record: dict[str, Any] = {"embeddings": "stored in the shards", "shards_teacher": stored}
    if teacher_ckpt is None:
        record["decoder"] = "the checkpoint's own prompt encoder and mask decoder (encoder-only distillation)"
        notes.append(
            "vs_teacher decodes the stored teacher embeddings with the checkpoint's own decoder; after a fine-tune "
            "that changed the decoder, pass teacher.checkpoint for the teacher's own"
        )
        return None, record
    sam, ckpt = load_model(teacher_ckpt, source.img_size, teacher_variant, "teacher.checkpoint")
    record |= ckpt | {"decoder": "the teacher checkpoint's prompt encoder and mask decoder"}
    record["matches_shards"] = stored.get("checkpoint_sha256") == ckpt["sha256"]
    if not record["matches_shards"]:
        msg = (
            f"teacher.checkpoint={teacher_ckpt} (sha256 {ckpt['sha256'][:12]}...) is not the teacher that wrote the "
            f"shards ({stored.get('variant')}, sha256 {str(stored.get('checkpoint_sha256'))[:12]}...): its decoder "
            "reads embeddings of another encoder"
        )
        log.warning(msg)
        notes.append(msg)
    return Decoder(sam.prompt_encoder, sam.mask_decoder), record


def evaluate(
    checkpoint: str | os.PathLike | Sam,
    data: str | os.PathLike | LabelledSet,
    out_dir: str | os.PathLike | None = None,
    *,
    teacher_checkpoint: str | os.PathLike | None = None,
    teacher_variant: str = "auto",
    teacher_precision: str = "fp32",
    masks_per_image: int | None = 16,
    limit: int | None = None,
    img_size: int | None = None,
    batch_size: int = 8,
    num_workers: int = 0,
    device: str | torch.device | None = "auto",
    examples: int = 8,
    progress: bool = True,
    val_fraction: float = 0.0,
    val_shards: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Scores a model with the mask-agreement protocol (mobilesam/protocol.py) and writes the report.

    Args:
        checkpoint: a checkpoint file (any `load_model` reads) or a `Sam` already in memory (e.g. a fine-tune's
            model before and after; it is put in eval mode on `device` and its mode is restored afterwards).
        data: a shard directory (teacher embeddings stored: no teacher run) or a `data.labels.LabelledSet`
            (images resized with mobilesam.transforms; the student, and a given teacher, embed them).
        out_dir: where metrics.json, per_image.csv, iou_hist.png and examples.png go; None writes nothing.
        teacher_checkpoint: decodes the teacher's masks with the teacher's own prompt encoder and mask decoder and
            scores the teacher against ground truth; on labelled data its encoder runs on the same resized image.
            Without it: on shards the checkpoint's own decoder reads the stored embedding; on labelled data there is
            no teacher comparison (the report says so).
        teacher_variant: "auto" or the variant expected of `teacher_checkpoint`.
        teacher_precision: fp32 | tf32 | bf16 | fp16 for a teacher encoder run (labelled data).
        masks_per_image: masks scored per image (a subset seeded by the image key, as training validation), or
            None for all.
        limit: only the first N images (shard order, or sorted keys).
        img_size: input size when the checkpoint file does not state it (see `load_model`).
        batch_size: images per encoder forward.
        num_workers: processes reading and decoding (masks at full size are the slow part).
        examples: masks in the worst-cases grid.
        val_fraction, val_shards: on shards, score only those a training run held out with the same setting
            (`data.val_fraction` / `data.val_shards`); by default every shard.

    Returns:
        The metrics.json content: {"vs_teacher": {"point", "two_points", "box"}, "vs_ground_truth": {...},
        ["teacher_vs_ground_truth": {...}], "protocol", "checkpoint", "teacher", "data", "notes", "files", ...}.
    """
    t0, notes = time.time(), []
    dev = choose_device(device)
    if masks_per_image is not None and masks_per_image < 1:
        raise ValueError(f"masks_per_image={masks_per_image}; give a positive number, or null for all masks")
    if isinstance(checkpoint, Sam):
        student, ckpt = checkpoint, {"path": None, "sha256": None, "variant": None}
        ckpt["img_size"] = student.image_encoder.img_size
    else:
        student, ckpt = load_model(checkpoint, img_size)
    s = student.image_encoder.img_size
    teacher, teacher_dec, teacher_rec = None, None, None
    if isinstance(data, LabelledSet):
        source: ShardSource | LabelledSource = LabelledSource(data, s)
        if teacher_checkpoint is not None:
            teacher, t_rec = load_model(teacher_checkpoint, s, teacher_variant, "teacher.checkpoint")
            teacher = teacher.to(dev)
            teacher_dec = Decoder(teacher.prompt_encoder, teacher.mask_decoder)
            teacher_rec = t_rec | {"embeddings": f"computed on the resized images ({teacher_precision})"}
        else:
            notes.append("no vs_teacher: labelled data stores no teacher embeddings; pass teacher.checkpoint")
    else:
        source = ShardSource(data, val_fraction, val_shards)
        if source.img_size != s:
            raise ValueError(
                f"checkpoint {ckpt['path']} runs at img_size={s} but the shards in {data} were made at "
                f"{source.img_size}: evaluate a checkpoint trained at {source.img_size}, or pass "
                f"img_size={source.img_size} if this file was (a file without sidecar is taken to be 1024)"
            )
        teacher_dec, teacher_rec = _teacher_for_shards(source, teacher_checkpoint, teacher_variant, notes)
        if teacher_dec is not None:
            teacher_dec = Decoder(teacher_dec.prompt_encoder.to(dev), teacher_dec.mask_decoder.to(dev))
    was_training, was_device = student.training, student.device
    student.eval().to(dev)
    records = EvalRecords(source, masks_per_image, limit)
    scorer = Scorer(student, teacher, teacher_dec, dev, teacher_precision, WorstCases(examples))
    try:
        _loop(scorer, records, batch_size, num_workers, progress)
    finally:
        student.to(was_device).train(was_training)
    result = _summary(scorer.tally, source, masks_per_image, teacher_rec, teacher_checkpoint is not None, notes)
    result["checkpoint"] = ckpt
    result["seconds"] = round(time.time() - t0, 1)
    if out_dir is not None:
        write_report(out_dir, result, scorer.tally.rows, scorer.tally.per_mask(), scorer.worst.worst_first())
    return result


def _loop(scorer: Scorer, records: EvalRecords, batch_size: int, num_workers: int, progress: bool) -> None:
    from tqdm.auto import tqdm

    batch: list[dict[str, Any]] = []
    bar = tqdm(record_loader(records, num_workers), total=len(records), disable=not progress, unit="img")
    for rec in bar:
        if "error" in rec:
            log.warning("skipped %s (%s): %s", rec["key"], rec["source"], rec["error"])
            scorer.tally.skipped.append({"source": f"{rec['key']} ({rec['source']})", "reason": rec["error"]})
            continue
        batch.append(rec)
        if len(batch) == batch_size:
            scorer.score(batch)
            batch = []
            bar.set_postfix(masks=scorer.tally.masks)
    if batch:
        scorer.score(batch)


def _summary(
    tally: Tally,
    source: ShardSource | LabelledSource,
    masks_per_image: int | None,
    teacher: dict[str, Any] | None,
    teacher_given: bool,
    notes: list[str],
) -> dict[str, Any]:
    """The metrics.json content (without checkpoint and files)."""
    per_mask = tally.per_mask()
    out: dict[str, Any] = {}
    for comp in COMPARISONS:
        if comp in per_mask:
            out[comp] = {k: float(per_mask[comp][k].double().mean()) for k in PROMPT_TYPES}
    if tally.embedding_se:
        out["embedding_mse"] = float(torch.cat(tally.embedding_se).double().mean())
    if not per_mask:
        notes.append("no masks were scored: every image lacks annotations or was skipped")
    decoder = (teacher or {}).get("decoder") or ("the teacher checkpoint's" if teacher_given else "none")
    out["protocol"] = protocol_description(masks_per_image, source.img_size, decoder)
    out["teacher"] = teacher
    reader_skips = list(getattr(getattr(source, "labelled", None), "skipped", []))
    out["data"] = {
        "kind": source.kind,
        "path": str(source.root),
        "shards": [Path(s).name for s in source.shards] if isinstance(source, ShardSource) else None,
        "images": tally.images,
        "masks": tally.masks,
        "images_without_annotations": tally.without_annotations,
        "empty_masks": tally.empty_masks,
        "both_empty": tally.both_empty,
        "skipped_images": len(tally.skipped),
        "skipped": reader_skips + tally.skipped,
    }
    if isinstance(source, ShardSource):
        m = source.manifest
        out["data"]["manifest"] = {k: m.get(k) for k in ("img_size", "sample_count", "skipped_count", "embedding")}
    out["notes"] = notes
    out["mobilesam_version"] = mobilesam.__version__
    return out


def run(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """`evaluate` from the composed configs/evaluate.yaml (a DictConfig or a plain dict); prints a summary."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    kind = cfg.get("dataset", "shards")
    if kind == "shards":
        if not cfg.get("shards"):
            raise ValueError("dataset=shards needs shards=DIR (a folder with dataset.json from the precompute)")
        data: str | LabelledSet = cfg["shards"]
    else:
        if not cfg.get("images"):
            raise ValueError(f"dataset={kind} needs images=DIR")
        options = {k: v for k, v in (cfg.get("labels") or {}).get(kind, {}).items() if v is not None}
        data = read_labels(kind, cfg["images"], cfg.get("annotations"), cfg.get("masks"), **options)
    teacher = cfg.get("teacher") or {}
    result = evaluate(
        cfg["checkpoint"],
        data,
        cfg["out_dir"],
        teacher_checkpoint=teacher.get("checkpoint"),
        teacher_variant=teacher.get("variant") or "auto",
        teacher_precision=teacher.get("precision") or "fp32",
        masks_per_image=cfg.get("masks_per_image"),
        limit=cfg.get("limit"),
        img_size=cfg.get("img_size"),
        batch_size=int(cfg.get("batch_size", 8)),
        num_workers=int(cfg.get("num_workers", 0)),
        device=cfg.get("device", "auto"),
        examples=int(cfg.get("examples", 8)),
        progress=bool(cfg.get("progress", True)),
        val_fraction=float(cfg.get("val_fraction") or 0.0),
        val_shards=cfg.get("val_shards"),
    )
    print(summary_table(result))
    return result
