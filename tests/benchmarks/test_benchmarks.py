"""The benchmark package: the list, the timing rule, and every benchmark's --quick mode with the table it prints."""

from __future__ import annotations

import datetime
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import benchmarks
from benchmarks import timing

ROOT = Path(__file__).resolve().parents[2]
TIME = re.compile(r"^\d+(\.\d+)? m?s\b")
RATIO = re.compile(r"\bx\d+\.\d\d\b")

# name -> (modules its quick mode needs, slow marker reason or ""); `gpu` has its own file (test_gpu.py)
QUICK = {
    "attention": ((), ""),
    "batch": ((), ""),
    "evaluate": ((), ""),
    "loader": (("webdataset",), ""),
    "many_prompts": ((), ""),
    "teacher_precision": (("webdataset",), ""),
    "everything": (("mobile_sam",), "the official generator embeds at 1024 (~15 s of CPU)"),
    "inference": (("mobile_sam",), "four vit_t encoder passes at 1024 (~20 s of CPU)"),
    "train": (("mobile_sam",), "two training steps at 1024 (~25 s of CPU)"),
    "finetune": (("lightning", "webdataset"), "Lightning and a teacher precompute (~20 s of CPU)"),
    "runtimes": (("onnxruntime", "onnxscript"), "an ONNX export with its check (~25 s of CPU)"),
    "quantization": (("executorch", "webdataset"), "an int8 quantization and two ExecuTorch lowerings"),
    "students": (("onnxruntime", "onnxscript"), "an ONNX export of each student and a training step (~25 s of CPU)"),
    "web": (("onnxruntime", "onnxscript", "selenium", "bin:chromium", "bin:chromedriver"), "a web export and Chromium"),
}


def tables(text: str) -> list[list[dict[str, str]]]:
    """Every Markdown table in text, each as a list of rows keyed by the header."""
    out, block = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif block:
            head, rows = block[0], block[2:]
            assert all(len(r) == len(head) for r in rows), block
            out.append([dict(zip(head, r)) for r in rows])
            block = []
    return out


def check_header(text: str, threads: int | None = None) -> None:
    """The machine, the thread count and today's date, as the timing module states them."""
    line = next(ln for ln in text.splitlines() if ln.startswith("# machine: "))
    assert f"{timing.machine()}; torch {torch.__version__}" in line, line
    assert f"measured: {datetime.date.today().isoformat()}" in line, line
    found = int(re.search(r"threads: (\d+)", line).group(1))
    assert found >= 1 and (threads is None or found == threads), line


def check_table(rows: list[dict[str, str]], ratios: bool = True) -> None:
    """The table holds times and 'xN.NN' ratios; a column named median holds times, one named ratio holds ratios.

    A cell may be empty (a row with nothing to compare).
    """
    head = list(rows[0])
    cells = [v for row in rows for v in row.values()]
    assert any(TIME.match(v) for v in cells), rows
    assert not ratios or any(RATIO.search(v) for v in cells), rows
    for row in rows:
        for c in head:
            if "median" in c and "median /" not in c:  # not "masks equal: median / worst"
                assert not row[c] or TIME.match(row[c]), (c, row)
            if "ratio" in c:
                assert not row[c] or RATIO.search(row[c]), (c, row)


@pytest.fixture
def quick(capsys):
    """Runs `python -m benchmarks NAME --quick` in this process (imports shared); returns what it printed."""
    threads = torch.get_num_threads()

    def run(name: str, *extra: str) -> str:
        assert benchmarks.main([name, "--quick", *extra]) == 0
        return capsys.readouterr().out

    yield run
    torch.set_num_threads(threads)


def _param(name: str):
    needs, slow = QUICK[name]
    missing = [m for m in needs if not (shutil.which(m[4:]) if m.startswith("bin:") else importlib.util.find_spec(m))]
    marks = [pytest.mark.slow] if slow else []
    if missing:
        marks.append(pytest.mark.skip(reason=f"{name} --quick needs {', '.join(missing)} (not installed)"))
    return pytest.param(name, marks=marks, id=name)


def test_every_benchmark_has_a_quick_test():
    assert set(benchmarks.available()) - {"gpu"} <= set(QUICK)


def test_the_list_names_every_benchmark_in_one_line_each():
    out = subprocess.run([sys.executable, "-m", "benchmarks"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = {ln.split()[0]: ln for ln in out.stdout.splitlines()[2:] if ln.strip()}
    assert set(lines) == set(benchmarks.available())
    assert all(len(ln.split()) > 3 for ln in lines.values()), lines  # a name and its sentence
    assert benchmarks.main(["no_such_bench"]) == 2


def test_benchmarks_are_a_package_not_scripts():
    # `python -m benchmarks` imports mobilesam, data and train from the root: no benchmark patches sys.path
    for path in ROOT.glob("benchmarks/*.py"):
        assert "sys.path" not in path.read_text(), path
    assert not list(ROOT.glob("scripts/bench*.py"))


def test_interleave_alternates_the_order_and_pairs_the_ratios():
    calls = []
    contenders = {k: (lambda k=k: calls.append(k)) for k in "AB"}
    r = timing.interleave(contenders, rounds=4, warmup=1)
    assert "".join(calls) == "BA" + "ABBAABBA"  # the warm-up round (r = -1) then ABBA ABBA
    assert all(len(v) == 4 for v in r.times.values())
    r = timing.Rounds({"A": [1.0, 2.0, 4.0], "B": [2.0, 2.0, 2.0]})
    assert r.median("A") == 2.0 and r.ratio("A", "B") == 1.0 and r.ratio("B", "A") == 1.0
    assert r.cell("A", "B") == "2000 ms (x1.00)" and r.rate("B", 4) == 2.0
    check_table(tables(r.table("B"))[0])


@pytest.mark.parametrize("name", [_param(n) for n in QUICK if n in benchmarks.available()])
def test_quick_mode_prints_medians_and_ratios(quick, name):
    text = quick(name)
    check_header(text)
    found = tables(text)
    assert found, text
    check_table(found[0], ratios=name != "finetune")  # finetune: absolute costs per recipe, nothing compared
    first = found[0]
    if name == "attention":
        assert float(first[0]["rel. error folded/bias"]) < 1e-4  # folding is exact up to rounding
        assert [r["path"] for r in first] == ["folded", "bias"]
    elif name == "everything":
        assert "boxes equal, stability max diff 0.0e+00" in first[1]["masks"]
        assert first[-1]["masks"].endswith("lowest IoU 1.0000")
    elif name == "inference":
        assert all(float(r["masks equal"].split("%")[0]) >= 99.99 for r in first[2:]), first
    elif name == "many_prompts":
        share = float(re.search(r"equal on ([\d.]+)% of pixels", text).group(1))
        assert share > 99.9 and all(float(r["peak resident GiB"]) > 0.1 for r in first)
    elif name == "runtimes":
        onnx = next(r for r in first if r["runtime"] == "ONNX Runtime")
        worst = float(onnx["masks equal: median / worst"].split("/")[1].strip(" %"))
        assert float(onnx["embedding rel. error"]) < 1e-3 and worst >= 99.9, onnx
    elif name == "teacher_precision":
        bf16 = next(r for r in first if r["precision"] == "bf16")
        assert 0 < float(bf16["embedding rel. error (worst image)"]) < 0.1
    elif name == "loader":
        assert [r["loader"] for r in first] == ["ours", "naive", "ours, masks from the RLE"]
    elif name == "batch":
        assert [r[""] for r in first] == ["batch_size=1", "batch_size=2"]
    elif name == "students":
        assert [r["student"] for r in first] == ["tiny_vit_5m", "repvit_m0_9", "efficientvit_b0"]
        assert all(RATIO.search(r["ONNX Runtime"]) and float(r["rel. err"]) < 1e-4 for r in first), first
        (train,) = found[1]  # one student's training step at 64
        assert train["student"] == "efficientvit_b0" and float(train["images/s"]) > 0 and float(train["peak GiB"]) > 0.1
