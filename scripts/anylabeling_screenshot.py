"""A headless screenshot of AnyLabeling segmenting an image with an exported model, through its own window: the
custom model loaded from the yaml as *Load Custom Model* does, a point prompt, the tool's prediction drawn.

Run it with AnyLabeling's own Python (it imports nothing of the project; HOME is where the tool keeps its rc file):

    HOME=$(mktemp -d) .venv/tools/anylabeling/bin/python scripts/anylabeling_screenshot.py \
        OUT/anylabeling.yaml docs/example.jpg shot.png --point 486 290
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from annotation_tool_masks import NO_TOOL, parse, tool_parser  # beside this script: it runs without the project


def main(argv: list[str] | None = None) -> int:
    ap = tool_parser(__doc__.split("\n\n")[0], "the screenshot (.png)")
    ap.add_argument("--width", type=int, default=1000, help="the screenshot's width in pixels (default 1000)")
    ap.add_argument("--colors", type=int, default=64, help="palette size of the PNG, to keep it small (default 64)")
    ap.add_argument("--timeout", type=float, default=120, help="seconds to wait for the model and the prediction")
    args = parse(ap, argv)

    from PyQt6 import QtCore, QtWidgets

    try:
        from anylabeling import config as anylabeling_config
        from anylabeling.views.labeling.label_widget import LabelingWidget
        from anylabeling.views.mainwindow import MainWindow
    except ImportError as e:
        ap.error(NO_TOOL.format(e))

    rc = Path.home() / ".anylabelingrc"  # where the app keeps its settings (the custom model list among them)
    rc.touch()
    anylabeling_config.current_config_file = str(rc)
    app = QtWidgets.QApplication([])
    window = MainWindow(app, config=anylabeling_config.get_config(str(rc)), filename=str(args.image.resolve()))
    window.resize(1200, 760)
    window.show()

    def wait(done: object, what: str) -> None:
        start = time.time()
        while not done():
            if time.time() - start > args.timeout:
                raise SystemExit(f"AnyLabeling did not finish {what} in {args.timeout:g} s")
            app.processEvents()
            time.sleep(0.05)

    labeling = window.labeling_widget.findChild(LabelingWidget)
    auto = labeling.auto_labeling_widget
    auto.show()
    manager = auto.model_manager
    messages: list[str] = []
    manager.new_model_status.connect(messages.append)
    manager.load_custom_model(str(args.config.resolve()))
    wait(lambda: manager.loaded_model_config is not None or any("Error" in m for m in messages), "loading the model")
    if manager.loaded_model_config is None:
        raise SystemExit(f"AnyLabeling could not load {args.config}: {messages[-1]}")
    manager.set_auto_labeling_marks([{"type": "point", "data": list(args.point), "label": 1}])
    auto.run_prediction()
    wait(lambda: labeling.canvas.shapes, "the prediction")
    start = time.time()
    while time.time() - start < 1:  # let the canvas paint
        app.processEvents()
        time.sleep(0.05)
    picture = window.grab()
    picture = picture.scaledToWidth(args.width, QtCore.Qt.TransformationMode.SmoothTransformation)
    staged = args.out.with_name(f".{args.out.name}.tmp.png")
    if not picture.save(str(staged)):
        raise SystemExit(f"could not write {staged}")
    from PIL import Image  # AnyLabeling depends on Pillow

    with Image.open(staged) as shot:
        shot.convert("RGB").quantize(args.colors, method=Image.Quantize.MEDIANCUT).save(staged, optimize=True)
    os.replace(staged, args.out)
    print(f"{args.out}: {manager.loaded_model_config['display_name']}, {len(labeling.canvas.shapes)} shapes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
