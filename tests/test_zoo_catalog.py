"""`slimkit zoo`: the catalogue, the Pareto front, and the CLI's table, JSON and plot."""

import json
import subprocess
import sys

from slimkit.zoo._catalog import TIMM_LIGHTWEIGHT, catalogue, pareto_front


def test_pareto_front_exact():
    points = [(1, 5), (2, 2), (3, 3), (5, 1), (2, 4), (1, 6)]
    # (3,3) is beaten by (2,2); (2,4) by (2,2); (1,6) by (1,5)
    assert pareto_front(points) == [0, 1, 3]


def test_catalogue_filters_timm_families():
    names = {e.name for e in catalogue("mobilenetv3*")}
    assert names == set(TIMM_LIGHTWEIGHT["MobileNetV3"])
    assert catalogue("no-such-model-*") == []


def test_zoo_cli_json_and_plot(tmp_path):
    out, png = tmp_path / "zoo.json", tmp_path / "zoo.png"
    cmd = [sys.executable, "-m", "slimkit.cli.main", "zoo", "--filter", "mobilenetv2_*", "--input-size", "3x32x32",
           "--json", str(out), "--plot", str(png)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    rows = {m["name"]: m for m in data["models"]}
    assert set(rows) == {"mobilenetv2_050", "mobilenetv2_100"}
    assert rows["mobilenetv2_050"]["macs"] < rows["mobilenetv2_100"]["macs"]
    assert all(m["latency_ms"] > 0 and m["input_size"] == [3, 32, 32] for m in rows.values())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_zoo_cli_unknown_filter_exit_2():
    res = subprocess.run([sys.executable, "-m", "slimkit.cli.main", "zoo", "--filter", "nothing*", "--list"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "no zoo model matches" in res.stderr
