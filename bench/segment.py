"""``python -m bench segment``: label maps, overlays and class scores of your own images for a vocabulary.

The evaluation path of a run, one image at a time: proposals (superpixels by default), the base model's dense
features under the inference protocol, a head (zero-shot, or kNN + fusion with the memory of a knn run folder
given by ``--memory``), then each pixel takes the most probable class of its proposal. Written under ``--out``:

- ``labels/<stem>.png``: the label map at the image's own size; value = class index in the vocabulary, uncovered
  pixels :data:`~datamodules.ignore.PNG_IGNORE` (255). With more than 255 classes the PNG is 16-bit and
  uncovered pixels are 65535. Scored by ``python -m bench eval semantic --pred-dir <out>/labels``.
- ``overlays/<stem>.png``: the image blended with a colour per class, class boundaries and a legend of the
  classes present (left out where the image is too small to hold it).
- ``scores/<stem>.npz`` (``--scores``): ``proposals`` int32 ``H×W`` (0 = uncovered, k = proposal k), ``probs``
  float32 ``Q×C`` (class distribution of each proposal) and ``classes``; per-pixel scores ``H×W×C`` are
  ``probs[proposals - 1]`` where ``proposals > 0``.
- ``vocabulary.txt`` (the class order of the label values) and ``segment.json`` (settings, model, memory, files).

Only the parser is built at import (``python -m bench`` builds every parser on each call); the work imports torch.
"""

from __future__ import annotations

import argparse
import io
import sys
import textwrap
from pathlib import Path
from typing import Any

from datamodules.ignore import PNG_IGNORE

WIDE_IGNORE = 65535  # uncovered pixels of 16-bit label maps (vocabularies of more than 255 classes)
PHOTO_MODEL = "--model ViT-B-16 --pretrained laion2b_s34b_b88k"


class _SegmentParser(argparse.ArgumentParser):
    """``segment --help`` ends with the defaults, read from :mod:`bench.config` (never a second copy)."""

    def format_help(self) -> str:
        from bench.config import RunConfig

        cfg = RunConfig()
        note = (f"Defaults without --memory (bench/config.py): --model {cfg.model.name}, --proposals "
                f"{cfg.proposals.kind} ({cfg.proposals.n_segments} segments), --inference {cfg.inference.mode}. "
                f"{cfg.model.name} has random weights (a smoke test); real photos want e.g. {PHOTO_MODEL}. With "
                "--memory the run's model, embedder, kNN, text, proposal and inference settings are used; "
                "--proposals, --n-segments and --inference still override them.")
        return f"{super().format_help()}\n{textwrap.fill(note, 100)}\n"


def add_segment_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="segment your own images with a vocabulary (optionally a knn run's memory)",
                       description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    p.__class__ = _SegmentParser
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format PIL reads)")
    p.add_argument("--classes", nargs="+", metavar="NAME", help="the vocabulary as class names, in label order")
    p.add_argument("--vocabulary", metavar="FILE", help="a vocabulary file ('name<TAB>thing|stuff' per line)")
    p.add_argument("--model", help=f"open_clip model name (real photos: {PHOTO_MODEL})")
    p.add_argument("--pretrained", help="open_clip pretrained tag or checkpoint file")
    p.add_argument("--memory", metavar="RUN_DIR", help="a knn run folder: its memory after its last finished step")
    p.add_argument("--proposals", help="proposer kind (python -m bench list)")
    p.add_argument("--n-segments", type=int, metavar="N", help="superpixels per image")
    p.add_argument("--inference", choices=("whole", "slide"), help="inference protocol")
    p.add_argument("--scores", action="store_true", help="also write scores/<stem>.npz (per-proposal "
                                                          "probabilities and the proposal map)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_segment)


def _cmd_segment(args: argparse.Namespace) -> int:
    written = segment(args)
    out = Path(args.out)
    count = len(written["images"])
    print(f"segmented {count} image{'s' if count != 1 else ''} into {out}: labels/ (class ids of vocabulary.txt, "
          f"{written['ignore']} = not covered), overlays/{', scores/' if args.scores else ''}; score with: "
          f"python -m bench eval semantic --pred-dir {out / 'labels'} --gt-dir GT "
          f"--num-classes {len(written['vocabulary'])}")
    return 0


# --- inputs -------------------------------------------------------------------------------------------------------

def _vocabulary(args: argparse.Namespace) -> Any:
    from bench.errors import ConfigError
    from datamodules.vocabulary import Vocabulary

    if (args.classes is None) == (args.vocabulary is None):
        raise ConfigError("segment: give the vocabulary, either --classes NAME ... or --vocabulary FILE "
                          f"({'both' if args.classes else 'neither'} given)")
    if args.classes:
        return Vocabulary.from_names("classes", args.classes)
    return Vocabulary.from_file(args.vocabulary)


def _check_images(paths: list[str]) -> list[Path]:
    """Every image exists and PIL can read its header, and no two share a stem (their outputs would collide)."""
    from PIL import Image

    from datamodules.contract import DataError
    from datamodules.labelmaps import PIL_ERRORS

    stems: dict[str, Path] = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise DataError(f"{path}: image missing" if not path.exists() else f"{path}: is not a file")
        try:
            with Image.open(path):
                pass
        except PIL_ERRORS as e:
            raise DataError(f"{path}: cannot decode image ({e})") from e
        if path.stem in stems:
            raise DataError(f"{path}: same file name as {stems[path.stem]}; outputs are named by it "
                            f"(labels/{path.stem}.png); segment them into different --out folders")
        stems[path.stem] = path
    return list(stems.values())


def _run_config(args: argparse.Namespace) -> tuple[Any, Any]:
    """The settings (a RunConfig) and the record of the ``--memory`` run (None without one)."""
    from bench.config import RunConfig, apply_mapping, set_value
    from bench.errors import ConfigError
    from bench.models import base_weights_identity
    from bench.record import load_record

    cfg, record = RunConfig(), None
    if args.memory:
        run = Path(args.memory)
        hint = "give the folder of a knn run (results/runs/<sequence>/knn/<run-id>)"
        if not (run / "record.json").is_file():
            what = "no such folder" if not run.exists() else "not a run folder (no record.json)"
            raise ConfigError(f"--memory {run}: {what}; {hint}")
        record = load_record(run)
        if record.method != "knn":
            raise ConfigError(f"--memory {run}: a {record.method!r} run keeps no kNN memory; {hint}")
        if record.steps_done < 1:
            raise ConfigError(f"--memory {run}: no step has finished yet (memory/step-1 is complete when step 1 "
                              "is); wait for the run or resume it")
        step = run / "memory" / f"step-{record.steps_done}"
        if not step.is_dir():
            raise ConfigError(f"--memory {run}: {step} missing (the record says {record.steps_done} steps "
                              "finished); resume the run with the command that made it to recompute it")
        apply_mapping(cfg, record.config, where=f"{run / 'record.json'}: config")
        if "inference" not in record.config:  # runs from before the key did what ``whole`` does
            cfg.inference.mode = "whole"
        given = args.model or cfg.model.name, cfg.model.pretrained if args.pretrained is None else args.pretrained
        if (args.model or args.pretrained is not None) and base_weights_identity(
                cfg.base.kind, *given, cfg.model.seed) != record.model.identity:
            raise ConfigError(f"--model {given[0]} --pretrained {given[1]!r}: the memory of {run} was made with "
                              f"{record.model.identity}; its features only match that model (leave out "
                              "--model and --pretrained)")
    else:
        for key, value in (("model.name", args.model), ("model.pretrained", args.pretrained)):
            if value is not None:
                set_value(cfg, key, value, f"--{key.split('.')[1]}")
    for key, value in (("proposals.kind", args.proposals), ("proposals.n_segments", args.n_segments),
                       ("inference.mode", args.inference)):
        if value is not None:
            set_value(cfg, key, value, f"--{key.split('.')[1].replace('_', '-')}")
    return cfg, record


# --- the pass -----------------------------------------------------------------------------------------------------

def _head(cfg: Any, record: Any, base: Any, memory_dir: str | None) -> Any:
    """A zero-shot head, or the knn run's head with its memory after its last finished step."""
    from bench.heads import ZeroShotHead
    from bench.methods import RunContext, get_method

    if record is None:
        return ZeroShotHead(base)
    method = get_method("knn")
    method.setup(RunContext(cfg, None, base, None, Path(memory_dir), None), record.steps_done)
    return method.head


def _proposer(cfg: Any, where: str) -> Any:
    """The proposer, tried on a blank image: an unknown kind, or one that needs a dataset sample's ground truth,
    stops here, before a model loads."""
    import torch

    from bench.config import proposer_from_config
    from bench.errors import ConfigError

    proposer = proposer_from_config(cfg)
    try:
        proposer({"image": torch.zeros(3, 8, 8, dtype=torch.uint8)})
    except KeyError as e:
        raise ConfigError(f"{where} {cfg.proposals.kind!r} needs the {e} of a dataset sample (ground truth), "
                          "which an image file does not have; pass --proposals superpixel") from None
    return proposer


def segment(args: argparse.Namespace) -> dict[str, Any]:
    """Segment ``args.images``; returns what ``segment.json`` holds (settings and, per image, its files)."""
    import torch
    from tqdm import tqdm

    from bench.config import base_from_config
    from bench.dense import check_protocol
    from bench.inference import background_class
    from bench.io import atomic_write_json, atomic_write_text, make_dirs

    vocabulary = _vocabulary(args)
    paths = _check_images(args.images)
    cfg, record = _run_config(args)
    proposer = _proposer(cfg, "--proposals" if args.proposals else f"{args.memory}: the run's proposals.kind")
    out = Path(args.out)
    make_dirs(out, "cannot create --out")
    base = base_from_config(cfg)
    check_protocol(cfg.inference, base.image_size, "--inference")
    head = _head(cfg, record, base, args.memory)
    head.begin([vocabulary])
    threshold = cfg.text.background_threshold  # as the run evaluates (bench.module.ContinualSegmenter)
    background = background_class(vocabulary.classes, threshold, f"the vocabulary ({vocabulary.name})")
    summary: dict[str, Any] = {
        "vocabulary": list(vocabulary.classes), "model": base.identity, "proposals": cfg.proposals.kind,
        "n_segments": cfg.proposals.n_segments, "inference": cfg.inference.mode,
        "ignore": PNG_IGNORE if len(vocabulary) <= PNG_IGNORE else WIDE_IGNORE, "images": []}
    if record is not None:
        summary["memory"] = _memory_note(head.memory, vocabulary, args.memory, record.steps_done)
    elif base.tag == "random-init":
        print(f"note: {cfg.model.name} has random weights, so without --memory its labels are at chance; "
              f"for photos use {PHOTO_MODEL}", file=sys.stderr)
    batch_size = cfg.batch_size
    with torch.inference_mode(), tqdm(total=len(paths), desc="segment", unit="img", disable=args.quiet) as bar:
        for start in range(0, len(paths), batch_size):
            batch = paths[start:start + batch_size]
            for path, predicted in zip(batch, _predict(batch, base, proposer, head, cfg.inference,
                                                       (background, threshold))):
                summary["images"].append(_write(out, path, *predicted, vocabulary, args.scores))
            bar.update(len(batch))
    atomic_write_text(out / "vocabulary.txt", "".join(f"{c}\t{'thing' if t else 'stuff'}\n"
                                                      for c, t in zip(vocabulary.classes, vocabulary.is_thing)))
    atomic_write_json(out / "segment.json", summary)
    return summary


def _memory_note(memory: Any, vocabulary: Any, run: str, step: int) -> dict[str, Any]:
    """What the memory holds for this vocabulary; classes it has no entry of are said on stderr."""
    absent = [c for c in vocabulary.classes if c not in memory.names]
    if absent:
        print(f"note: the memory of {run} has no entries of {', '.join(absent)}; these are classified by the base "
              "model alone", file=sys.stderr)
    return {"run": str(run), "step": step, "entries": len(memory), "classes_absent": absent}


def _predict(paths: list[Path], base: Any, proposer: Any, head: Any, protocol: Any,
             background: tuple[int | None, float]) -> list[tuple[Any, Any, Any]]:
    """Per image: its uint8 ``H×W×3`` pixels, the proposal map (int64 ``H×W``, 0 = uncovered) and the class
    distribution of each proposal (float ``Q×C``, after the background fallback: class index and threshold)."""
    import torch

    from bench.inference import background_fallback
    from bench.module import eval_features
    from datamodules.labelmaps import load_rgb

    rgbs = [load_rgb(p) for p in paths]
    samples = [{"image": torch.tensor(rgb).permute(2, 0, 1).contiguous()} for rgb in rgbs]
    label_maps = [proposer(s).long() for s in samples]
    base_feats, memory_feats = eval_features(base, head.embedder, samples, protocol)
    return [(rgbs[i], m, background_fallback(head(m, base_feats[i], None if memory_feats is None else
                                                  memory_feats[i], 0), *background))
            for i, m in enumerate(label_maps)]


# --- outputs ------------------------------------------------------------------------------------------------------

def _write(out: Path, path: Path, rgb: Any, label_map: Any, probs: Any, vocabulary: Any,
           scores: bool) -> dict[str, Any]:
    import numpy as np

    from bench.inference import semantic_from_proposals
    from bench.io import atomic_write_bytes
    from bench.overlay import overlay_png

    semantic = semantic_from_proposals(label_map, probs).cpu().numpy()
    files = {"image": str(path), "size": list(semantic.shape), "label": str(out / "labels" / f"{path.stem}.png"),
             "overlay": str(out / "overlays" / f"{path.stem}.png")}
    atomic_write_bytes(files["label"], label_png(semantic, len(vocabulary)))
    atomic_write_bytes(files["overlay"], overlay_png(rgb, semantic, vocabulary.classes))
    if scores:
        files["scores"] = str(out / "scores" / f"{path.stem}.npz")
        buf = io.BytesIO()
        np.savez_compressed(buf, proposals=label_map.cpu().numpy().astype(np.int32),
                            probs=probs.float().cpu().numpy(), classes=np.array(vocabulary.classes))
        atomic_write_bytes(files["scores"], buf.getvalue())
    return files


def label_png(semantic: Any, num_classes: int) -> bytes:
    """PNG bytes of an int ``H×W`` class map (negative = uncovered): 8-bit with uncovered = 255 for up to 255
    classes, else 16-bit with uncovered = 65535."""
    import numpy as np
    from PIL import Image

    from bench.errors import ConfigError

    if num_classes >= WIDE_IGNORE:
        raise ConfigError(f"a vocabulary of {num_classes} classes does not fit a 16-bit label PNG (at most "
                          f"{WIDE_IGNORE - 1} classes)")
    wide = num_classes > PNG_IGNORE
    ignore, dtype = (WIDE_IGNORE, np.uint16) if wide else (PNG_IGNORE, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.where(semantic < 0, ignore, semantic).astype(dtype)).save(buf, format="PNG")
    return buf.getvalue()
