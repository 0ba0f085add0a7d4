"""What the review screen shows and how a drawing becomes an edit: display windows,
class-coloured mask overlays, the screen <-> image pixel mapping, and canvas drawings
(boxes, clicks, brush and eraser strokes) turned into a label map (pure numpy / PIL); and
the proposal to show: the item's head, with where a propagated one came from."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from pipeline.fm.preprocess import CT_WINDOWS
from pipeline.imaging import to_display
from store import labels, propagation
from store.db import Store
from store.models import Item, JobStatus, Label

DISPLAY_PX = 512  # the long side of the image on screen
CONTEXT_PX = 150  # prev / next slice thumbnails
CT_PRESETS = ("brain", "lung", "abdomen", "bone", "soft_tissue")
PERCENTILE = "percentile"
# Canvas colours that are not classes. Class colours are made unique per class (see
# `ToolColours`) so every stroke maps back to exactly one class.
POSITIVE = "rgba(0,230,118,0.95)"
NEGATIVE = "rgba(255,23,68,0.95)"
ERASER = "rgba(250,250,250,0.3)"


# --------------------------------------------------------------------------- windows


def window_presets(modality: str, image: np.ndarray) -> dict[str, tuple[float, float]]:
    """Display windows (low, high) for an item: CT presets in HU, else the percentile one."""
    img = np.asarray(image)
    presets: dict[str, tuple[float, float]] = {}
    if modality.upper() == "CT" and img.ndim == 2:
        for name in CT_PRESETS:
            level, width = CT_WINDOWS[name]
            presets[name] = (level - width / 2.0, level + width / 2.0)
    lo, hi = (float(v) for v in np.percentile(img.astype(np.float32), [0.5, 99.5]))
    presets[PERCENTILE] = (lo, hi if hi > lo else lo + 1.0)
    return presets


def default_preset(modality: str) -> str:
    return "soft_tissue" if modality.upper() == "CT" else PERCENTILE


def slider_range(image: np.ndarray, presets: dict[str, tuple[float, float]]) -> tuple[float, float]:
    """The window slider's bounds: the image's intensities and every preset."""
    img = np.asarray(image)
    lows = [float(img.min())] + [lo for lo, _ in presets.values()]
    highs = [float(img.max())] + [hi for _, hi in presets.values()]
    lo, hi = min(lows), max(highs)
    return lo, (hi if hi > lo else lo + 1.0)


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Screen:
    """An image of rows x cols shown at width x height screen (canvas) pixels."""

    rows: int
    cols: int
    width: int
    height: int

    @classmethod
    def fit(cls, shape: Sequence[int], long_side: int = DISPLAY_PX) -> Screen:
        rows, cols = int(shape[0]), int(shape[1])
        s = long_side / max(rows, cols)
        return cls(rows, cols, max(1, round(cols * s)), max(1, round(rows * s)))

    @property
    def sx(self) -> float:
        """Image columns per screen pixel."""
        return self.cols / self.width

    @property
    def sy(self) -> float:
        return self.rows / self.height

    def to_image(self, x: float, y: float) -> tuple[float, float]:
        """Screen point -> image point (x along columns, y along rows; continuous pixels)."""
        return x * self.sx, y * self.sy

    def to_screen(self, x: float, y: float) -> tuple[float, float]:
        return x / self.sx, y / self.sy

    def sample_grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Screen (row, col) indices at the centre of every image pixel."""
        r = np.minimum(((np.arange(self.rows) + 0.5) / self.sy).astype(int), self.height - 1)
        c = np.minimum(((np.arange(self.cols) + 0.5) / self.sx).astype(int), self.width - 1)
        return r, c


# --------------------------------------------------------------------------- rendering


def hex_rgb(color: str) -> tuple[int, int, int]:
    c = color.strip().lstrip("#")
    if len(c) == 3:
        c = "".join(ch * 2 for ch in c)
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def class_lut(classes: Sequence[dict]) -> np.ndarray:
    """(256, 3) uint8 colour per label value (0 and unknown values: black)."""
    lut = np.zeros((256, 3), np.uint8)
    for c in classes:
        v = int(c["value"])
        if 0 < v < 256:
            lut[v] = hex_rgb(c.get("color") or "#ffff00")
    return lut


def _edges(mask: np.ndarray) -> np.ndarray:
    """Pixels of a label map whose 4-neighbour has another value (a 1 px outline)."""
    e = np.zeros(mask.shape, bool)
    e[1:, :] |= mask[1:, :] != mask[:-1, :]
    e[:-1, :] |= mask[:-1, :] != mask[1:, :]
    e[:, 1:] |= mask[:, 1:] != mask[:, :-1]
    e[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    return e & (mask > 0)


def render(
    image: np.ndarray, mask: np.ndarray | None, classes: Sequence[dict],
    window: tuple[float, float], opacity: float, screen: Screen,
) -> Image.Image:
    """The image in a window, scaled to the screen, with the label map as filled colour
    (`opacity`) and a full-strength outline; the mask keeps its pixels (nearest)."""
    grey = to_display(np.asarray(image), *window)
    pic = Image.fromarray(grey).convert("RGB").resize((screen.width, screen.height),
                                                      Image.Resampling.BILINEAR)
    if mask is None or not np.any(mask):
        return pic
    rgb = np.asarray(pic, np.float32)
    big = np.asarray(Image.fromarray(np.asarray(mask, np.uint8)).resize(
        (screen.width, screen.height), Image.Resampling.NEAREST))
    colour = class_lut(classes)[big].astype(np.float32)
    inside = (big > 0)[..., None]
    a = float(np.clip(opacity, 0.0, 1.0))
    out = np.where(inside, rgb * (1.0 - a) + colour * a, rgb)
    edge = _edges(big)
    out[edge] = colour[edge]
    return Image.fromarray(out.astype(np.uint8))


def png_bytes(picture: Image.Image, compress_level: int = 1) -> bytes:
    """PNG bytes, fast compression (the page sends a new one on every overlay change)."""
    buf = io.BytesIO()
    picture.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def context_picture(image: np.ndarray, window: tuple[float, float],
                    size: int = CONTEXT_PX) -> Image.Image:
    """A small picture of a neighbouring slice in the same window."""
    pic = Image.fromarray(to_display(np.asarray(image), *window))
    pic.thumbnail((size, size))
    return pic


def mask_summary(mask: np.ndarray, classes: Sequence[dict]) -> dict[str, int]:
    """Pixels per class name (classes with none are left out)."""
    counts = np.bincount(np.asarray(mask, np.uint8).ravel(), minlength=256)
    return {c["name"]: int(counts[int(c["value"])]) for c in classes
            if 0 < int(c["value"]) < 256 and counts[int(c["value"])]}


# --------------------------------------------------------------------------- drawings


@dataclass(frozen=True)
class ToolColours:
    """One canvas colour string per class, unique even when two classes share a colour."""

    by_value: dict[int, str]

    @classmethod
    def for_classes(cls, classes: Sequence[dict]) -> ToolColours:
        out = {}
        for i, c in enumerate(classes):
            r, g, b = hex_rgb(c.get("color") or "#ffff00")
            out[int(c["value"])] = f"rgba({r},{g},{b},{0.6 + i / 1000:.3f})"
        return cls(out)

    def value_of(self, colour: str | None) -> int | None:
        for v, c in self.by_value.items():
            if c == colour:
                return v
        return None


@dataclass(frozen=True)
class Box:
    value: int
    x0: float
    y0: float
    x1: float
    y1: float


@dataclass(frozen=True)
class Click:
    positive: bool
    x: float
    y: float


@dataclass(frozen=True)
class Paint:
    value: int  # 0: eraser
    lines: tuple[tuple[tuple[float, float], ...], ...]
    width: float


Edit = Box | Click | Paint


def _scaled_size(obj: dict, key: str) -> float:
    scale = "scaleX" if key == "width" else "scaleY"
    return float(obj.get(key, 0.0)) * float(obj.get(scale, 1.0) or 1.0)


def _left_top(obj: dict, width: float, height: float) -> tuple[float, float]:
    offsets = {"left": 0.0, "top": 0.0, "center": 0.5, "right": 1.0, "bottom": 1.0}
    return (float(obj.get("left", 0.0)) - offsets[obj.get("originX", "left")] * width,
            float(obj.get("top", 0.0)) - offsets[obj.get("originY", "top")] * height)


def _bezier(p0, p1, p2, n: int = 6) -> list[tuple[float, float]]:
    t = np.linspace(0.0, 1.0, n + 1)[1:, None]
    pts = (1 - t) ** 2 * np.asarray(p0) + 2 * (1 - t) * t * np.asarray(p1) + t ** 2 * np.asarray(p2)
    return [(float(x), float(y)) for x, y in pts]


def _path_lines(obj: dict) -> tuple[tuple[tuple[float, float], ...], ...]:
    """A Fabric.js path's polylines in canvas pixels (curves sampled; moved paths shifted)."""
    lines: list[list[tuple[float, float]]] = []
    cur: tuple[float, float] | None = None
    for cmd in obj.get("path") or []:
        op, args = str(cmd[0]).upper(), [float(a) for a in cmd[1:]]
        if op == "M":
            cur = (args[0], args[1])
            lines.append([cur])
        elif op == "L" and cur is not None:
            cur = (args[0], args[1])
            lines[-1].append(cur)
        elif op == "Q" and cur is not None:
            pts = _bezier(cur, (args[0], args[1]), (args[2], args[3]))
            lines[-1].extend(pts)
            cur = pts[-1]
        elif op == "C" and cur is not None:  # cubic: its control polygon is close enough
            lines[-1].extend([(args[0], args[1]), (args[2], args[3]), (args[4], args[5])])
            cur = (args[4], args[5])
    pts = np.array([p for line in lines for p in line], float)
    if len(pts) == 0:
        return ()
    # Fabric places a path by its centre (left/top with its origin); the path data keep the
    # coordinates it was drawn at. A path moved or scaled with the edit tool differs.
    sw = float(obj.get("strokeWidth", 0.0))
    sx, sy = float(obj.get("scaleX", 1.0) or 1.0), float(obj.get("scaleY", 1.0) or 1.0)
    w = (float(obj.get("width", 0.0)) + sw) * sx
    h = (float(obj.get("height", 0.0)) + sw) * sy
    left, top = _left_top(obj, w, h)
    centre = np.array([left + w / 2.0, top + h / 2.0])
    own = (pts.min(0) + pts.max(0)) / 2.0
    if abs(sx - 1.0) > 1e-6 or abs(sy - 1.0) > 1e-6 or np.abs(centre - own).max() > 1.0:
        lines = [[(float(centre[0] + (x - own[0]) * sx), float(centre[1] + (y - own[1]) * sy))
                  for x, y in line] for line in lines]
    return tuple(tuple(line) for line in lines)


def parse_drawing(json_data: dict | None, colours: ToolColours) -> list[Edit]:
    """The canvas objects (Fabric.js JSON from streamlit-drawable-canvas) as edits, in the
    order they were drawn; objects in colours the review screen did not hand out are ignored."""
    edits: list[Edit] = []
    for obj in (json_data or {}).get("objects", []) or []:
        kind = str(obj.get("type", "")).lower()
        stroke = obj.get("stroke")
        if kind == "rect":
            value = colours.value_of(stroke)
            if value is None:
                continue
            w, h = _scaled_size(obj, "width"), _scaled_size(obj, "height")
            x0, y0 = _left_top(obj, w, h)
            edits.append(Box(value, x0, y0, x0 + w, y0 + h))
        elif kind == "circle":
            if stroke not in (POSITIVE, NEGATIVE):
                continue
            r = float(obj.get("radius", 0.0)) * float(obj.get("scaleX", 1.0) or 1.0)
            d = 2.0 * r + float(obj.get("strokeWidth", 0.0))
            left, top = _left_top(obj, d, d)
            edits.append(Click(stroke == POSITIVE, left + d / 2.0, top + d / 2.0))
        elif kind == "path":
            value = 0 if stroke == ERASER else colours.value_of(stroke)
            if value is None:
                continue
            lines = _path_lines(obj)
            if lines:
                edits.append(Paint(value, lines, float(obj.get("strokeWidth", 1.0))))
    return edits


def rasterize(paint: Paint, screen: Screen) -> np.ndarray:
    """A brush stroke as image pixels: drawn at screen resolution (round caps and joins, as
    the canvas shows it), then read at each image pixel's centre."""
    canvas = Image.new("L", (screen.width, screen.height), 0)
    draw = ImageDraw.Draw(canvas)
    r = paint.width / 2.0
    for line in paint.lines:
        if len(line) > 1:
            draw.line(line, fill=255, width=max(1, round(paint.width)), joint="curve")
        for x, y in (line[0], line[-1]) if len(line) > 1 else line:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    rows, cols = screen.sample_grid()
    return np.asarray(canvas)[np.ix_(rows, cols)] > 0


# (box in image pixels x0, y0, x1, y1; clicks in image pixels; click labels) -> mask, IoU
Refiner = Callable[[tuple[float, float, float, float], tuple[tuple[float, float], ...],
                    tuple[int, ...]], tuple[np.ndarray, float]]


@dataclass
class Applied:
    mask: np.ndarray
    refined: list[tuple[int, float]]  # (class value, predicted IoU) per box refined
    notes: list[str]  # what could not be applied, in words


def apply_edits(base: np.ndarray, edits: Sequence[Edit], screen: Screen,
                refine: Refiner | None, needs_box: bool = True) -> Applied:
    """The label map after the edits, in order.

    A box and the clicks after it (until the next box) are one structure: the FM's mask for
    the box and clicks replaces the box's class inside the box, at the place of the
    structure's last box or click. A class that gets a box loses its proposal (the base)
    everywhere: a box says "this is the structure", so it replaces a wrong proposal rather
    than adding to it; a second box of the class adds a second structure. Brush strokes
    paint their class; the eraser paints 0. `refine` None (no FM) leaves boxes and clicks
    out with a note.
    """
    mask = np.array(base, np.uint8, copy=True)
    if refine is not None:
        for value in {e.value for e in edits if isinstance(e, Box)}:
            mask[np.asarray(base) == value] = 0
    # Where each structure ends: its box index -> index of its last click (or the box).
    structures: dict[int, list[int]] = {}
    current: int | None = None
    orphan_clicks = 0
    for i, e in enumerate(edits):
        if isinstance(e, Box):
            current = i
            structures[i] = []
        elif isinstance(e, Click):
            if current is None:
                orphan_clicks += 1
            else:
                structures[current].append(i)
    ends = {(clicks[-1] if clicks else b): b for b, clicks in structures.items()}
    result = Applied(mask, [], [])
    if orphan_clicks and needs_box:
        result.notes.append(f"{orphan_clicks} click(s) before any box were left out: draw a "
                            "box around the structure first, then click")
    if structures and refine is None:
        result.notes.append("no foundation model is loaded, so boxes and clicks do nothing: "
                            "use the brush and eraser")
    for i, e in enumerate(edits):
        if isinstance(e, Paint):
            mask[rasterize(e, screen)] = e.value
        elif i in ends and refine is not None:
            box = edits[ends[i]]
            clicks = [edits[j] for j in structures[ends[i]]]
            x0, y0 = screen.to_image(min(box.x0, box.x1), min(box.y0, box.y1))
            x1, y1 = screen.to_image(max(box.x0, box.x1), max(box.y0, box.y1))
            points = tuple(screen.to_image(c.x, c.y) for c in clicks)
            seg, iou = refine((x0, y0, x1, y1), points, tuple(int(c.positive) for c in clicks))
            r0, r1 = max(0, int(np.floor(y0))), min(screen.rows, int(np.ceil(y1)))
            c0, c1 = max(0, int(np.floor(x0))), min(screen.cols, int(np.ceil(x1)))
            inside = mask[r0:r1, c0:c1]
            inside[inside == box.value] = 0
            mask[np.asarray(seg, bool)] = box.value
            result.refined.append((box.value, float(iou)))
    return result


def rounded_key(box: Sequence[float], points: Sequence[Sequence[float]],
                labels: Sequence[int]) -> tuple:
    """A hashable key for a refine call (1/100 px), to reuse the FM's answer on reruns."""
    return (tuple(round(float(v), 2) for v in box),
            tuple((round(float(x), 2), round(float(y), 2)) for x, y in points),
            tuple(int(v) for v in labels))


# --------------------------------------------------------------------------- the proposal

# The page waits this long for a propagation on its way to the slice it opens (the
# neighbour of the one just validated) rather than showing "no proposal".
PROPAGATION_WAIT_S = 10.0
# A propagation still queued may be behind a long job (or no worker runs): wait less for it.
PROPAGATION_QUEUED_WAIT_S = 3.0
PROPAGATION_POLL_S = 0.25


def head_when_ready(store: Store, item: Item, wait_s: float = PROPAGATION_WAIT_S,
                    poll_s: float = PROPAGATION_POLL_S,
                    queued_wait_s: float = PROPAGATION_QUEUED_WAIT_S) -> Label | None:
    """The item's head; when it has none while a propagation of its volume runs, polls until
    a proposal lands, that job ends, or `wait_s` passes (`queued_wait_s` while the job has
    not started: a worker busy elsewhere or none running must not hold the clinician up)."""
    t0 = time.monotonic()
    while True:
        with store.session() as s:
            head = labels.head(s, item.id)
            state = propagation.pending(s, item) if head is None else None
        elapsed = time.monotonic() - t0
        if state is None or elapsed >= wait_s \
                or (state == JobStatus.queued and elapsed >= queued_wait_s):
            return head
        time.sleep(poll_s)


def proposal_provenance(store: Store, head: Label | None) -> str | None:
    """"Propagated by <FM> from slice k (validated by <user>)" for a propagated proposal."""
    with store.session() as s:
        found = propagation.provenance(s, head)
    return found.line() if found is not None else None
