"""Every file a project makes, one artifact each: where it goes (the one spelling of its name),
the provenance record it carries, and ``status()``: is the file on disk the one the current
plan would make, and if not, why.

The data flows one way. The TOML gives the plan (:mod:`engine.project.plan`); the plan gives
each artifact its path and the record it must carry; the trainer, the merge and the sampler
write that record into the file they make (safetensors metadata, PNG text); `copylora run`,
`copylora check`, the queue and the app only ask ``status()``. Torch-free: headers, PNG text
chunks and file hashes only.

=============  ==========================  ===================================================
artifact       file                        current when it carries
=============  ==========================  ===================================================
A, B           ``NAME_A/B.safetensors``    the side's training fingerprint and planned steps
pair           ``NAME_PAIR.safetensors``   the same, of the one-LoRA routes' LoRA (addift, slider)
result         ``NAME.safetensors``        its inputs' hashes and ratios, [merge], the route
stats          ``NAME.stats.json``         the current result's inputs
grid           ``samples/NAME-grid.png``   the current result's hash and the project's [sample]
check          ``samples/NAME-check.png``  the current result's and A's hashes (differential)
=============  ==========================  ===================================================
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.formats.safetensors_header import HeaderError, read_header

if TYPE_CHECKING:
    from engine.project.plan import Plan

CURRENT, STALE, MISSING = "current", "stale", "missing"


@dataclass(frozen=True)
class Status:
    """Where one output stands: ``current`` (``reason`` is its file name), ``stale`` (made
    from something else: ``reason`` says what changed) or ``missing`` (not made yet)."""

    state: str
    reason: str = ""
    note: str = ""  # what else a user should know of a current output ("copied at step 1200 of 4000")

    @property
    def current(self) -> bool:
        return self.state == CURRENT

    def pair(self) -> tuple[bool, str]:
        """(current, reason): the form the queue's up-to-date steps print."""
        return self.current, self.reason


@dataclass(frozen=True)
class OutputPaths:
    """The paths of a project's outputs under its output folder. Every output's name is spelled
    here and nowhere else."""

    folder: Path
    name: str
    shared: bool = False  # the folder is outside the project's own: run folders go under runs/NAME (engine.project.output_owner)

    def lora(self, side: str) -> Path:
        return self.folder / f"{self.name}_{side.upper()}.safetensors"

    @property
    def result(self) -> Path:
        return self.folder / f"{self.name}.safetensors"

    @property
    def stats(self) -> Path:
        return stats_path_for(self.result)

    @property
    def samples(self) -> Path:
        return self.folder / "samples"

    @property
    def runs(self) -> Path:
        return self.folder / "runs" / self.name if self.shared else self.folder / "runs"

    def run_dir(self, side: str) -> Path:
        return self.runs / side.upper()

    @property
    def grid(self) -> Path:
        return self.samples / grid_name(self.result)

    @property
    def check(self) -> Path:
        return self.samples / f"{self.result.stem}-check.png"

    def step_preview(self, side: str, step: int) -> Path:
        """A side's preview during training (``sample_every_n_steps``)."""
        return self.samples / f"{self.lora(side).stem}-step{step:06d}.png"

    def step_snapshot(self, side: str, step: int) -> Path:
        """A side's LoRA written on request during training, beside its checkpoints."""
        return self.run_dir(side) / f"{self.lora(side).stem}-step{step:06d}.safetensors"


def grid_name(lora: Path) -> str:
    """The strength grid of a LoRA file: ``NAME-grid.png``."""
    return f"{lora.stem}-grid.png"


def stats_path_for(path: str | os.PathLike) -> Path:
    """A merged LoRA's per-layer stats, beside it: ``NAME.stats.json`` for ``NAME.safetensors``
    (a stats file names itself)."""
    path = Path(path)
    return path if path.name.endswith(".stats.json") else path.with_name(path.stem + ".stats.json")


# ---- reading what a file records


# (path, inode, size, mtime, ctime): what file_metadata read there. Every status of a project
# reads its LoRAs' metadata, some twice, and the Projects screen asks for every project's at
# each look: a LoRA's header is 60-300 kB of JSON, parsed again each time (a fifth of the app's
# time over a folder of trained projects). A file written again is a new inode (atomic writes)
# or a new mtime and ctime, so a file that changed is read again.
_METADATA: dict[tuple, tuple[dict[str, str] | None, str]] = {}
_METADATA_KEPT = 1024


def file_metadata(path: Path) -> tuple[dict[str, str] | None, str]:
    """(a safetensors file's metadata, "") or (None, why not): missing, or unreadable/truncated."""
    try:
        info = os.stat(path)
    except OSError:
        return None, ""
    import stat

    if not stat.S_ISREG(info.st_mode):
        return None, ""
    key = (os.path.abspath(path), info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    read = _METADATA.get(key)  # (the app's threads share it: one lookup, never a key then its value)
    if read is None:
        try:
            read = (read_header(path).metadata, "")
        except HeaderError as exc:
            read = (None, f"unreadable ({exc})")
        if len(_METADATA) >= _METADATA_KEPT:
            _METADATA.clear()
        _METADATA[key] = read
    meta, why = read
    return (None if meta is None else dict(meta)), why  # a copy: a caller's change stays its own


_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # a PNG's last chunk, always these 12 bytes


def png_record(path: Path) -> dict | None:
    """The ``copylora`` text chunk of a PNG the sampler wrote (None: no file, or no record, or
    a file cut short: the chunk comes before the pixels, so a grid cut at 3 kB read as current
    and `run` never drew it again, while the app said it cannot be read)."""
    try:
        from PIL import Image

        with open(path, "rb") as handle:
            handle.seek(-len(_PNG_END), os.SEEK_END)
            if handle.read() != _PNG_END:
                return None
        with Image.open(path) as image:
            record = json.loads(image.info.get("copylora", "{}"))
        return record if isinstance(record, dict) else None
    except (OSError, ValueError):
        return None


def content_hash(path: Path) -> str | None:
    """sha256 of a file (None: no readable file), remembered per (path, mtime, size, inode)
    (engine.hashing.remembered_sha256): one scan asks it of the same result for the result, its
    stats, its grid and its check."""
    from engine.hashing import remembered_sha256

    try:
        return remembered_sha256(path)
    except (OSError, ValueError):  # not there, a folder where a file belongs, unreadable: no hash, so never "current"
        return None


def _json(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


# ---- the artifacts


@dataclass(frozen=True)
class TrainingRecord:
    """What a side's LoRA records of its training, taken when training starts (a picture edited
    during the run must not make the finished file look current)."""

    fingerprint: str
    base_weights: dict | None  # the differential route's A under B
    start_weights: dict | None  # [train] network_weights
    # the fingerprints a file of this training may carry (its own, and the one an earlier copylora wrote)
    accepted: frozenset[str] = frozenset()

    def metadata(self, step: int) -> dict[str, str]:
        meta = {"copylora_fingerprint": self.fingerprint, "copylora_steps": str(step)}
        if self.base_weights is not None:  # trained on base + A: which A, at which strength
            meta["copylora_base_weights"] = json.dumps(self.base_weights)
        if self.start_weights is not None:  # started from [train] network_weights (kohya records none)
            meta["copylora_network_weights"] = json.dumps(self.start_weights)
        return meta


class SideLora:
    """The LoRA of side A or B (``NAME_A.safetensors``), or the one-LoRA routes' (``NAME_PAIR``)."""

    def __init__(self, plan: Plan, side: str) -> None:
        self.plan, self.side = plan, side.lower()
        self.path = plan.outputs.lora(self.side)

    def record(self) -> TrainingRecord:
        from engine.project.network_weights import network_weights_path
        from engine.project.plan import base_weights_for
        from engine.project.provenance import base_weights_record, run_fingerprints, start_weights_record

        base_weights = base_weights_for(self.plan, self.side)
        start = network_weights_path(self.plan.project, self.side)
        fingerprints = run_fingerprints(self.plan, self.side)
        accepted = frozenset(fingerprints)
        meta, _unreadable = file_metadata(self.path)
        if meta and meta.get("copylora_fingerprint") == fingerprints[1] != fingerprints[0] and self._other_base_at_its_path(meta):
            accepted = frozenset(fingerprints[:1])  # its checkpoints were trained on that other checkpoint too: not resumed
        return TrainingRecord(fingerprints[0],
                              None if base_weights is None else base_weights_record(base_weights),
                              None if start is None else start_weights_record(start),
                              accepted)

    def status(self) -> Status:
        meta, unreadable = file_metadata(self.path)
        if meta is None:
            return Status(STALE, unreadable) if unreadable else Status(MISSING, "no LoRA yet")
        want = self.record()
        if meta.get("copylora_fingerprint") != want.fingerprint and (changed := self._other_base_at_its_path(meta)):
            return Status(STALE, changed)
        if meta.get("copylora_fingerprint") not in want.accepted | {want.fingerprint}:
            return Status(STALE, self._why_other_fingerprint(meta, want))
        sp = self.plan.side(self.side)
        if meta.get("copylora_steps") != str(sp.total_steps):
            stopped = self._stopped_early(meta, sp)
            if stopped is not None:
                return stopped
            return Status(STALE, f"trained {meta.get('copylora_steps', '?')} steps, plan says {sp.total_steps}")
        return Status(CURRENT, self.path.name)

    def _other_base_at_its_path(self, meta: dict[str, str]) -> str | None:
        """A LoRA an earlier copylora trained (its fingerprint held the base's path, not its
        content) whose base file is now another checkpoint at that path, as its kohya model hash
        tells (single files: 64 KiB read); None where it is the same, or cannot be told."""
        from engine.hashing import legacy_model_hash

        recorded = meta.get("ss_sd_model_hash") or ""
        base = Path(self.plan.project.base_model_path())
        try:
            if len(recorded) != 8 or not base.is_file() or legacy_model_hash(base) == recorded:
                return None
        except OSError:
            return None
        return f"the base model at {base} is another checkpoint than the one it was trained on (model hash {recorded})"

    def _stopped_early(self, meta: dict[str, str], sp) -> Status | None:
        """A LoRA its copy rule ended early (engine.train.copy_check) is current while the rule is
        the one it stopped by and the plan would have trained at least as far; a changed rule
        makes it stale, saying so."""
        from engine.project.copy_rule import stop_rule

        if not meta.get("copylora_stopped"):
            return None
        try:
            steps = int(meta.get("copylora_steps", ""))
        except ValueError:
            return None
        if steps > sp.total_steps:
            return None
        rule = stop_rule(sp.params)
        if meta.get("copylora_stop_rule") != rule.text():
            return Status(STALE, f"stopped at step {steps} by another stop_when_copied rule ({meta.get('copylora_stop_rule')})")
        return Status(CURRENT, self.path.name, note=f"copied at step {steps} of {sp.total_steps}")

    def _why_other_fingerprint(self, meta: dict[str, str], want: TrainingRecord) -> str:
        """The fingerprint is a hash: what changed is read from the records kept beside it."""
        if want.base_weights is not None and meta.get("copylora_base_weights") and _json(meta["copylora_base_weights"]) != want.base_weights:
            return "A or its multiplier changed since B was trained on it"
        recorded = meta.get("copylora_network_weights")
        if (want.start_weights is not None or recorded) and (_json(recorded) if recorded else None) != want.start_weights:
            return "network_weights (the LoRA it starts from) changed since it was trained"
        if changed := self._changed_settings(meta):
            return changed
        if self.plan.project.reg is not None:
            return "parameters, images, prompts, captions or base model changed"
        return "parameters, images or base model changed"

    def _changed_settings(self, meta: dict[str, str]) -> str | None:
        """The [train] keys whose values differ from those the LoRA's kohya metadata records
        ("learning_rate 0.001 → 0.003"): a user changed the rate and read only "parameters,
        images or base model changed". None where none of those differ (pictures, caption, …)."""
        sp = self.plan.side(self.side)
        p = sp.params
        bucket = list(sp.buckets[0]) if sp.buckets else p.resolution
        now = {  # as engine.train.lora_facts gives them to the metadata, str() of each
            "learning_rate": ("ss_learning_rate", p.learning_rate), **({"unet_lr": ("ss_unet_lr", p.unet_lr)} if p.unet_lr else {}),
            "network_dim": ("ss_network_dim", p.network_dim), "network_alpha": ("ss_network_alpha", p.network_alpha),
            "lr_scheduler": ("ss_lr_scheduler", p.lr_scheduler), "lr_warmup_steps": ("ss_lr_warmup_steps", p.lr_warmup_steps),
            "seed": ("ss_seed", p.seed), "mixed_precision": ("ss_mixed_precision", p.mixed_precision),
            "clip_skip": ("ss_clip_skip", p.clip_skip),
            "max_token_length": ("ss_max_token_length", p.max_token_length if p.max_token_length > 75 else None),
            "noise_offset": ("ss_noise_offset", p.noise_offset or None),
            "min_snr_gamma": ("ss_min_snr_gamma", p.min_snr_gamma), "max_grad_norm": ("ss_max_grad_norm", p.max_grad_norm),
            "network_train_unet_only": ("ss_network_train_unet_only", p.network_train_unet_only),
            "resolution": ("ss_resolution", tuple(bucket)),
        }
        changed = [f"{name} {meta[key]} → {value}" for name, (key, value) in now.items() if key in meta and meta[key] != str(value)]
        if not changed:
            return None
        return ", ".join(changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")


class Result:
    """The project's result (``NAME.safetensors``): the SVD merge +1·B −1·A, or, by the
    differential route, B re-ranked (:mod:`engine.merge.project_result` makes it)."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.path = plan.outputs.result

    @property
    def differential(self) -> bool:
        from engine.project.plan import is_differential

        return is_differential(self.plan.project)

    @property
    def one_lora(self) -> bool:
        """The addift or slider route: the result is their one LoRA, written at its multiplier."""
        from engine.project.pair_route import is_pair_route

        return is_pair_route(self.plan.project)

    def inputs(self) -> tuple[list[Path], list[float]]:
        """The LoRA files and their ratios that make the result. A one-LoRA route's at its
        training multiplier: strength 1 is then the +m state it was trained in."""
        if self.one_lora:
            from engine.project.pair_route import PAIR

            return [self.plan.outputs.lora(PAIR)], [float(self.plan.side(PAIR).params.pair_multiplier)]
        if self.differential:
            return [self.plan.outputs.lora("b")], [1.0]
        return [self.plan.outputs.lora("b"), self.plan.outputs.lora("a")], list(self.plan.project.merge.ratios)

    def lbws(self) -> list | None:
        """``[merge] lbws`` as one block-weight vector per input (None: no weighting). The
        differential route has one input, B: its vector is the first (B's, as in [B, A])."""
        from engine.lbw_vectors import per_model_lbws

        paths, _ = self.inputs()
        vectors = list(self.plan.project.merge.lbws)
        return per_model_lbws(vectors[:1] if len(paths) == 1 else vectors, len(paths))

    def route(self) -> dict:
        """The route as the result records it (A's file by content for the differential one)."""
        from engine.project.plan import base_weights_for
        from engine.project.provenance import base_weights_record

        record: dict = {"method": self.plan.project.info.method}
        base_weights = base_weights_for(self.plan, "b")
        if base_weights is not None:
            record["base_weights"] = base_weights_record(base_weights)
        return record

    def record(self, route: dict | None = None) -> dict[str, str]:
        """The metadata the project's route adds to the merge's own ``copylora_merge`` record
        (``route``: as read before the merge began, so a file changed meanwhile shows stale)."""
        return route_metadata(route if route is not None else self.route())

    def status(self) -> Status:
        meta, unreadable = file_metadata(self.path)
        if meta is None:
            return Status(STALE, unreadable) if unreadable else Status(MISSING, "no merged LoRA yet")
        made = _json(meta.get("copylora_merge", "{}"))
        if not isinstance(made, dict):
            return Status(STALE, "merged file has no provenance")
        route_problem = self._route_problem(meta)
        if route_problem:
            return Status(STALE, route_problem)
        paths, ratios = self.inputs()
        expected = [{"file": p.name, "sha256": content_hash(p), "ratio": r} for p, r in zip(paths, ratios)]
        got = [{"file": i.get("file"), "sha256": i.get("sha256"), "ratio": i.get("ratio")} for i in made.get("inputs", [])]
        if got != expected:
            return Status(STALE, "B changed since the result was made" if self.differential
                          else "the pair's LoRA or pair_multiplier changed since the result was made" if self.one_lora
                          else "A or B changed since the merge")
        merge = self.plan.project.merge
        if made.get("new_rank") != merge.new_rank or made.get("new_conv_rank") != (merge.new_conv_rank or merge.new_rank):
            return Status(STALE, "[merge] ranks changed")
        from engine.lbw_vectors import parse_lbw

        def weighting(vector) -> list[float] | None:
            # all ones scales nothing: the file made without lbws is the one it would make
            weights = None if vector is None else [float(x) for x in vector]
            return None if weights is None or all(w == 1.0 for w in weights) else weights

        wanted_lbw = [weighting(None if v is None else parse_lbw(v)) for v in (self.lbws() or [None] * len(paths))]
        made_lbw = [i.get("lbw") for i in made.get("inputs", [])]
        if [weighting(v) for v in made_lbw] != wanted_lbw:
            return Status(STALE, "[merge] lbws changed")
        # Made from these very files, but a file that is itself stale (a picture or a setting
        # changed while it trained, or since) makes a result of what the project no longer
        # says: the file a user ships read "current" while its A was trained on the old picture.
        for side in self.plan.trained:
            made_from = SideLora(self.plan, side).status()
            if not made_from.current:
                name = "the pair's LoRA" if side not in ("a", "b") else f"{side.upper()}'s LoRA"
                return Status(STALE, f"made from {name}, not current: {made_from.reason}")
        return Status(CURRENT, self.path.name)

    def _route_problem(self, meta: dict[str, str]) -> str:
        made = _json(meta.get("copylora_route") or '{"method": "svd-merge"}')  # older files: the SVD route
        if not isinstance(made, dict):
            return "the result has an unreadable route record"
        want = self.route()
        if made.get("method") != want["method"]:
            return f"made by the {made.get('method')} route, the project now uses {want['method']}"
        if made.get("base_weights") != want.get("base_weights"):
            return "A or its multiplier changed since B was trained on it"
        return ""


def route_metadata(route: dict) -> dict[str, str]:
    """A result's route as its metadata records it (``copylora merge --project`` writes it too)."""
    return {"copylora_route": json.dumps(route)}


class Stats:
    """The result's per-layer stats (``NAME.stats.json``), written with it by the merge."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.path = plan.outputs.stats

    def status(self) -> Status:
        if not self.path.is_file():
            return Status(MISSING, "no stats yet")
        result = Result(self.plan)
        made = result.status()
        if not made.current:
            return Status(STALE if made.state == STALE else MISSING, f"the result is not current ({made.reason})")
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return Status(STALE, "unreadable stats")
        meta, _ = file_metadata(result.path)
        record = _json((meta or {}).get("copylora_merge")) or {}
        if not isinstance(document, dict) or [i.get("sha256") for i in document.get("inputs", [])] != [i.get("sha256") for i in record.get("inputs", [])]:
            return Status(STALE, "the stats are of another merge")
        return Status(CURRENT, self.path.name)


class Grid:
    """The result's strength grid (``samples/NAME-grid.png``), drawn by the preview job."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.path = plan.outputs.grid

    def record(self) -> dict[str, Any]:
        """What the grid records beyond the sampler's own: the project's [sample] (the settings
        drawn may be scaled down for the CPU), and the clip skip past 1 it was drawn at (the
        training's: grids drawn before previews read it were drawn at 1, and are drawn again)."""
        clip_skip = self.plan.side(self.plan.trained[0]).params.clip_skip
        return {"project_sample": asdict(self.plan.project.sample), **({"clip_skip": clip_skip} if clip_skip > 1 else {})}

    def status(self) -> Status:
        result = self.plan.outputs.result
        if not self.path.is_file():
            return Status(MISSING, "no preview yet")
        if not result.is_file():  # the grid is there: "missing: no preview yet" it said
            return Status(STALE, "its merged LoRA is gone")
        record = png_record(self.path)
        if record is None:
            return Status(STALE, "unreadable preview")
        if record.get("lora_sha256") != content_hash(result):
            return Status(STALE, "the merged LoRA changed")
        if record.get("project_sample") != self.record()["project_sample"]:  # older grids lack it: drawn again once
            return Status(STALE, "[sample] changed")
        if record.get("clip_skip", 1) != self.record().get("clip_skip", 1):
            return Status(STALE, "drawn at another clip skip than the LoRA trained at")
        if not Result(self.plan).status().current:  # it read "current" beside "merged: stale" (new_rank changed)
            return Status(STALE, "of a result that is made again")
        return Status(CURRENT, self.path.name)


class Check:
    """The differential route's check picture (``samples/NAME-check.png``): A, then A with the
    result (which should draw picture B), then picture B itself."""

    IMAGES = 2  # the pictures it samples: the third column is picture B itself

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.path = plan.outputs.check

    def status(self) -> Status:
        record = png_record(self.path) if self.path.is_file() else None
        if record is None:
            return Status(MISSING if not self.path.is_file() else STALE, "no check picture of the current A and result")
        if record.get("lora_sha256") != content_hash(self.plan.outputs.result) or record.get("a_sha256") != content_hash(self.plan.outputs.lora("a")):
            return Status(STALE, "no check picture of the current A and result")
        if not Result(self.plan).status().current:  # base_weights_multiplier changed: "result stale", the check "current"
            return Status(STALE, "of a result that is made again")
        return Status(CURRENT, self.path.name)


def preview_status(plan: Plan) -> Status:
    """The preview job's outputs together: the grid, and the check picture by the differential route."""
    grid = Grid(plan).status()
    if not grid.current or not Result(plan).differential:
        return grid
    check = Check(plan).status()
    return check if not check.current else grid


def artifacts(plan: Plan) -> dict[str, SideLora | Result | Stats | Grid | Check]:
    """Every output of the project by the name `copylora check` shows it under."""
    found: dict[str, SideLora | Result | Stats | Grid | Check] = {
        side.upper(): SideLora(plan, side) for side in plan.trained}  # A and B, or the one-LoRA routes' PAIR
    found.update({"result": Result(plan), "stats": Stats(plan), "grid": Grid(plan)})
    if Result(plan).differential:
        found["check"] = Check(plan)
    return found
