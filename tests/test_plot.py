"""python -m ddp_edf.plot OUT: reads metrics.jsonl (resumed runs, cut-off last lines) and writes a PNG."""

import json

import pytest

from ddp_edf import plot


def write_metrics(out, records, tail=""):
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def record(step, split, loss, error=0.5, epoch=0):
    return {"step": step, "epoch": epoch, "split": split, "loss": loss, "error": error}


def test_a_step_logged_twice_keeps_its_last_record_and_steps_are_sorted(tmp_path):
    write_metrics(tmp_path, [record(10, "train", 2.0), record(20, "train", 1.5), record(20, "dev", 1.6),
                             record(20, "train", 1.4), record(30, "train", 1.0, epoch=1), record(5, "train", 3.0)],
                  tail='{"step": 40, "spl')   # a kill in the middle of the last write
    metrics = plot.read_metrics(tmp_path)
    assert [(s, r["loss"]) for s, r in metrics["train"]] == [(5, 3.0), (10, 2.0), (20, 1.4), (30, 1.0)]
    assert [s for s, _ in metrics["dev"]] == [20]


def test_a_broken_line_in_the_middle_is_an_error(tmp_path):
    write_metrics(tmp_path, [record(10, "train", 2.0)], tail="garbage\n" + json.dumps(record(20, "train", 1.0)))
    with pytest.raises(plot.PlotError, match=r"metrics.jsonl:2"):
        plot.read_metrics(tmp_path)


def test_missing_metrics_is_one_line_error(tmp_path, capsys):
    assert plot.main([str(tmp_path / "nothing")]) == 1
    assert "metrics.jsonl not found" in capsys.readouterr().err


def test_writes_curves_png_of_a_real_run(tmp_path):
    pytest.importorskip("matplotlib", reason="the plot extra is not installed: pip install -e '.[plot]'")
    records = [record(s, "train", 2.0 / s, epoch=s // 50) for s in range(10, 101, 10)]
    records += [record(50, "dev", 0.1, epoch=0), record(100, "dev", 0.05, epoch=1), record(100, "test", 0.06, epoch=1)]
    write_metrics(tmp_path, records)
    (tmp_path / "config.toml").write_text('[data]\ndataset = "fashion-mnist"\n[model]\nkind = "mlp"\nhidden = [256]\n'
                                          '[train]\nglobal_batch = 128\n')
    assert plot.main([str(tmp_path)]) == 0
    png = (tmp_path / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (1300, 494)   # 10 x 3.8 inches at 130 dpi
    assert plot.describe_run(tmp_path).endswith("fashion-mnist, mlp 256, global batch 128")
