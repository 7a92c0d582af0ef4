"""trainer.precision=auto / channels_last=auto: decided by CPU capability, then by a probe."""
import json
import os
import subprocess
import sys

import pytest
import torch

from pipeline import numerics
from pipeline.config import ConfigError, load_config
from tests.helpers import FAST, REPO, run_cli

# An AVX-512 CPU made to behave like an AVX2-only one for ATen and oneDNN: under these two
# variables bf16 autocast is 8-20x slower than fp32 on the AVX-512 EPYC, as on a real AVX2 EPYC
# (docs/benchmarks.md), so the capability filter must see them.
AVX2_EMULATION = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def _trainer_cfg(*overrides):
    return load_config(None, list(overrides)).trainer


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "numerics.json"
    monkeypatch.setenv("PIPELINE_NUMERICS_CACHE", str(path))
    return path


def test_decide_takes_bf16_only_past_the_margin():
    rates = {"fp32/nchw": 100.0, "fp32/channels_last": 90.0, "bf16/nchw": 150.0, "bf16/channels_last": 200.0}
    chosen = numerics.decide(rates, "auto", "")
    assert (chosen.precision, chosen.channels_last) == ("bf16", True)
    assert chosen.reason == "bf16: 2.00x fp32 in the probe; channels_last 1.33x nchw"
    close = {**rates, "bf16/nchw": 105.0, "bf16/channels_last": 108.0}  # 1.08x: inside the 1.10 margin
    chosen = numerics.decide(close, "auto", "")
    assert (chosen.precision, chosen.channels_last) == ("fp32", False)
    assert chosen.reason == "fp32: bf16 only 1.08x fp32 in the probe; nchw 1.11x channels_last"


def test_layout_tie_goes_to_channels_last():
    chosen = numerics.decide({"fp32/nchw": 103.0, "fp32/channels_last": 100.0}, "auto", "no bf16 instructions (AVX2)")
    assert (chosen.precision, chosen.channels_last) == ("fp32", True)
    assert chosen.reason == "fp32: no bf16 instructions (AVX2); layouts within 5% in the probe"


def test_explicit_settings_are_never_overridden(cache, monkeypatch):
    monkeypatch.setattr(numerics, "probe", lambda *a, **k: pytest.fail("explicit settings must not probe"))
    chosen = numerics.choose(_trainer_cfg("trainer.precision=fp32", "trainer.channels_last=false"), torch.device("cpu"))
    assert (chosen.precision, chosen.channels_last, chosen.reason) == ("fp32", False, "fp32: explicit")


def test_probe_is_cached_per_machine_and_thread_count(cache, monkeypatch):
    calls = []
    real_probe = numerics.probe

    def counting_probe(*args, **kwargs):
        calls.append(torch.get_num_threads())
        return real_probe(*args, **kwargs)

    monkeypatch.setattr(numerics, "probe", counting_probe)
    threads = torch.get_num_threads()
    try:
        first = numerics.choose(_trainer_cfg(), torch.device("cpu"))
        second = numerics.choose(_trainer_cfg(), torch.device("cpu"))
        assert first == second and len(calls) == 1
        torch.set_num_threads(1 if threads > 1 else 2)
        numerics.choose(_trainer_cfg(), torch.device("cpu"))
        assert len(calls) == 2
    finally:
        torch.set_num_threads(threads)
    stored = json.loads(cache.read_text())
    assert len(stored) == 2 and all(rate > 0 for rates in stored.values() for rate in rates.values())


def test_a_concurrent_probe_takes_the_rates_written_first(cache, monkeypatch):
    """Two processes that probed at once decide alike: the second finds the first's rates when it
    comes to write, and uses them instead of its own."""
    first = {"fp32/nchw": 100.0, "fp32/channels_last": 150.0, "bf16/nchw": 90.0, "bf16/channels_last": 95.0}
    key = numerics._cache_key(["fp32", "bf16"], [False, True])

    def racing_probe(*args, **kwargs):  # the other process writes while this one probes
        cache.write_text(json.dumps({key: first}))
        return {"fp32/nchw": 100.0, "fp32/channels_last": 90.0, "bf16/nchw": 300.0, "bf16/channels_last": 310.0}

    monkeypatch.setattr(numerics, "probe", racing_probe)
    assert numerics.cached_probe(["fp32", "bf16"], [False, True]) == first
    assert json.loads(cache.read_text()) == {key: first}


def test_probe_leaves_the_random_stream_alone(cache):
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    numerics.probe(["fp32"], [False, True], rounds=1)
    assert torch.equal(torch.rand(3), expected)


def test_failed_probe_falls_back_to_fp32_with_one_warning(cache, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("oneDNN exploded")

    monkeypatch.setattr(numerics, "probe", broken)
    chosen = numerics.choose(_trainer_cfg(), torch.device("cpu"))
    assert (chosen.precision, chosen.reason) == ("fp32", "fp32: probe failed")
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["warning: numerics probe failed (RuntimeError: oneDNN exploded); using fp32"]


@pytest.mark.parametrize("value,ok", [("auto", True), ("true", True), ("false", True), ("True", True),
                                      ("maybe", False)])
def test_channels_last_values(value, ok):
    if ok:
        assert str(load_config(None, [f"trainer.channels_last={value}"]).trainer.channels_last).lower() in (
            "auto", "true", "false")
    else:
        with pytest.raises(ConfigError, match="trainer.channels_last"):
            load_config(None, [f"trainer.channels_last={value}"])


def _choose_in_subprocess(env: dict, *overrides: str) -> tuple[dict, str]:
    code = ("import json, torch; from pipeline.config import load_config; from pipeline.numerics import choose; "
            f"n = choose(load_config(None, {list(overrides)!r}).trainer, torch.device('cpu')); "
            "print(json.dumps(n.__dict__))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr


def test_avx2_emulation_picks_fp32_without_a_bf16_probe(tmp_path):
    chosen, err = _choose_in_subprocess({**AVX2_EMULATION, "PIPELINE_NUMERICS_CACHE": str(tmp_path / "c.json")})
    assert chosen["precision"] == "fp32"
    assert chosen["reason"].startswith("fp32: ")
    assert "AVX2" in chosen["reason"]  # "no bf16 instructions (AVX2)" or "ATen limited to AVX2"
    (timed,) = json.loads((tmp_path / "c.json").read_text()).values()
    assert sorted(timed) == ["fp32/channels_last", "fp32/nchw"]  # bf16 never probed
    assert err == ""


def test_explicit_bf16_without_bf16_instructions_warns_once(tmp_path):
    chosen, err = _choose_in_subprocess({**AVX2_EMULATION, "PIPELINE_NUMERICS_CACHE": str(tmp_path / "c.json")},
                                        "trainer.precision=bf16")
    assert chosen["precision"] == "bf16"  # explicit: kept
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: trainer.precision=bf16 on a CPU with ")
    assert "8x slower than fp32" in lines[0] and "trainer.precision=fp32" in lines[0]


@pytest.mark.slow
def test_the_choice_is_printed_and_recorded(tmp_path, demo_data):
    """A run under the AVX2 emulation trains in fp32 and says why, in the start line and both JSON files;
    a few bf16 steps (explicit) still train."""
    run = tmp_path / "run"
    proc = run_cli("train", *FAST, f"data.path={demo_data}", f"trainer.run_dir={run}", "trainer.max_steps=2",
                   "trainer.epochs=1", env={**AVX2_EMULATION, "PIPELINE_NUMERICS_CACHE": str(tmp_path / "c.json")},
                   check=True)
    env = json.loads((run / "environment.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert env["precision"] == summary["precision"] == "fp32"
    assert env["cpu_capability"] == "AVX2"
    assert env["numerics_reason"] == summary["numerics_reason"] and "AVX2" in env["numerics_reason"]
    assert f"fp32{' channels_last' if env['channels_last'] else ''} ({env['numerics_reason']})" in proc.stdout

    bf16 = tmp_path / "bf16"
    run_cli("train", *FAST, f"data.path={demo_data}", f"trainer.run_dir={bf16}", "trainer.max_steps=3",
            "trainer.epochs=1", "trainer.log_every=1", "trainer.precision=bf16", check=True)
    summary = json.loads((bf16 / "summary.json").read_text())
    assert summary["precision"] == "bf16" and summary["numerics_reason"].startswith("bf16: explicit")
    assert summary["steps"] == 3
