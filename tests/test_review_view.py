"""Review-screen helpers: screen <-> image pixels, canvas drawings to edits, overlays."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import review_view as rv

CLASSES = [{"name": "grey", "value": 1, "color": "#f58231"},
           {"name": "white", "value": 2, "color": "#4363d8"}]
COLOURS = rv.ToolColours.for_classes(CLASSES)


def test_screen_scales_the_long_side_and_maps_back_exactly():
    screen = rv.Screen.fit((233, 197))
    assert (screen.width, screen.height) == (433, 512)
    assert screen.to_image(433, 512) == pytest.approx((197, 233))
    assert screen.to_image(*screen.to_screen(12.5, 200.25)) == pytest.approx((12.5, 200.25))
    rows, cols = screen.sample_grid()
    assert len(rows) == 233 and len(cols) == 197 and rows.max() < 512 and cols.max() < 433


def test_tool_colours_are_unique_even_for_equal_class_colours():
    same = rv.ToolColours.for_classes([{"name": "a", "value": 1, "color": "#ff0000"},
                                       {"name": "b", "value": 2, "color": "#ff0000"}])
    assert len(set(same.by_value.values())) == 2
    assert [same.value_of(same.by_value[v]) for v in (1, 2)] == [1, 2]
    assert rv.ERASER not in COLOURS.by_value.values()


def _rect(value, left, top, width, height, **kw):
    return {"type": "Rect", "left": left, "top": top, "width": width, "height": height,
            "originX": "left", "originY": "top", "scaleX": 1, "scaleY": 1,
            "strokeWidth": 2, "stroke": COLOURS.by_value[value], **kw}


def _click(positive, x, y, radius=3, stroke_width=2):
    # What the canvas's point tool stores for a click at (x, y).
    return {"type": "Circle", "left": x - (radius + stroke_width / 2), "top": y,
            "originX": "left", "originY": "center", "radius": radius, "scaleX": 1,
            "strokeWidth": stroke_width, "stroke": rv.POSITIVE if positive else rv.NEGATIVE}


def _path(stroke, points, width=10):
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    cmds = [["M", *points[0]]] + [["L", *p] for p in points[1:]]
    return {"type": "Path", "originX": "center", "originY": "center",
            "left": (min(xs) + max(xs)) / 2, "top": (min(ys) + max(ys)) / 2,
            "width": max(xs) - min(xs), "height": max(ys) - min(ys), "scaleX": 1,
            "scaleY": 1, "strokeWidth": width, "stroke": stroke, "path": cmds}


def test_parse_drawing_reads_boxes_clicks_and_strokes_in_canvas_pixels():
    drawing = {"objects": [
        _rect(2, 40, 30, 100, 60),
        _rect(2, 100, 100, 50, 50, scaleX=2, originX="center"),  # resized with the edit tool
        _click(True, 80, 55), _click(False, 60, 50),
        _path(COLOURS.by_value[1], [(10, 10), (30, 10)]),
        _path(rv.ERASER, [(5, 5), (6, 6)]),
        {"type": "Rect", "stroke": "black", "left": 0, "top": 0, "width": 5, "height": 5},
    ]}
    edits = rv.parse_drawing(drawing, COLOURS)
    assert edits[0] == rv.Box(2, 40, 30, 140, 90)
    assert edits[1] == rv.Box(2, 50, 100, 150, 150)
    assert edits[2] == rv.Click(True, pytest.approx(80), pytest.approx(55))
    assert edits[3].positive is False
    assert isinstance(edits[4], rv.Paint) and edits[4].value == 1
    assert edits[4].lines == (((10.0, 10.0), (30.0, 10.0)),)
    assert edits[5].value == 0
    assert len(edits) == 6  # the black rect was not drawn by the review screen


def test_a_moved_path_is_shifted_with_its_object():
    obj = _path(COLOURS.by_value[1], [(10, 10), (30, 10)])
    obj["left"] += 50  # the edit tool moved it 50 px right
    [paint] = rv.parse_drawing({"objects": [obj]}, COLOURS)
    assert paint.lines == (((60.0, 10.0), (80.0, 10.0)),)


def test_apply_edits_refines_boxes_in_image_pixels_and_paints_strokes():
    screen = rv.Screen.fit((100, 50))  # shown at 256 x 512: 5.12 screen px per pixel
    base = np.zeros((100, 50), np.uint8)
    base[0:10, 0:10] = 2  # proposal white matter outside the box: replaced by the box too
    base[60:70, 20:30] = 2  # inside the box: replaced by the FM's mask
    base[30:40, 30:40] = 1  # another class's proposal: kept
    calls = []

    def refine(box, points, labels):
        calls.append((box, points, labels))
        seg = np.zeros((100, 50), bool)
        seg[52:58, 12:18] = True
        return seg, 0.9

    s = 512 / 100
    edits = [
        rv.Box(2, 10 * s, 50 * s, 40 * s, 80 * s),
        rv.Click(True, 15 * s, 55 * s),
        rv.Paint(1, (((0.0, 95 * s), (49 * s, 95 * s)),), 2 * s),
        rv.Paint(0, (((0.0, 5 * s), (49 * s, 5 * s)),), 2 * s),
    ]
    applied = rv.apply_edits(base, edits, screen, refine)
    [(box, points, labels)] = calls  # one structure: the box and its click, refined once
    assert box == pytest.approx((10, 50, 40, 80)) and labels == (1,)
    assert points == (pytest.approx((15, 55)),)
    m = applied.mask
    assert (m[52:58, 12:18] == 2).all() and not (m[60:70, 20:30] == 2).any()
    assert (m[95, :] == 1).all() and (m[30:40, 30:40] == 1).all()
    assert not (m[0:10, 0:10] == 2).any()  # the box replaced the class's wrong proposal
    assert (m[5, :] == 0).all()  # erased across the proposal
    assert applied.refined == [(2, 0.9)] and applied.notes == []
    assert (base[60:70, 20:30] == 2).all()  # the base is not changed in place
    # Without a model a box does nothing, so it takes nothing away either.
    assert (rv.apply_edits(base, edits[:1], screen, None).mask == base).all()


def test_without_a_model_boxes_do_nothing_and_say_so():
    screen = rv.Screen.fit((20, 20))
    base = np.zeros((20, 20), np.uint8)
    applied = rv.apply_edits(base, [rv.Click(True, 5, 5), rv.Box(1, 0, 0, 100, 100)], screen,
                             None)
    assert not applied.mask.any() and len(applied.notes) == 2


def test_rasterize_samples_the_stroke_at_pixel_centres():
    screen = rv.Screen.fit((10, 10))  # 51.2 screen px per image pixel
    paint = rv.Paint(1, (((0.0, 256.0), (512.0, 256.0)),), 51.2)
    m = rv.rasterize(paint, screen)
    assert m[5].all() and not m[3].any() and not m[7].any()


def test_render_overlays_class_colours_and_windows_ct():
    image = np.full((4, 4), 40, np.int16)
    image[0, 0] = -1000
    mask = np.zeros((4, 4), np.uint8)
    mask[2:, 2:] = 2
    presets = rv.window_presets("CT", image)
    assert set(presets) >= {"brain", "lung", "abdomen", "bone", rv.PERCENTILE}
    assert presets["brain"] == (0.0, 80.0)
    pic = np.asarray(rv.render(image, mask, CLASSES, presets["brain"], 1.0,
                               rv.Screen.fit((4, 4), 8)))
    assert pic.shape == (8, 8, 3)
    assert tuple(pic[7, 7]) == (0x43, 0x63, 0xD8)  # white matter's colour at full opacity
    assert tuple(pic[0, 0]) == (0, 0, 0) and pic[0, 7, 0] == 127  # -1000 HU black; 40 mid
    assert rv.window_presets("MR", image).keys() == {rv.PERCENTILE}
    assert rv.png_bytes(rv.render(image, None, CLASSES, (0, 80), 0.5,
                                  rv.Screen.fit((4, 4)))).startswith(b"\x89PNG")
