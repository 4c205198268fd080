"""The API benchmark's warm-up reads the emulator's JIT activity from /proc: it must find
the emulator's JVM and its compiler threads, or it would measure nothing and stop early."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import api_latency  # noqa: E402


def test_the_warm_up_finds_the_emulators_jvm_and_its_compiler_threads(emulators):
    jvm = api_latency.emulator_jvm(emulators)
    assert "java" in Path(f"/proc/{jvm}/cmdline").read_bytes().decode()
    # A JVM compiles from its first seconds on, so its compiler threads have used CPU.
    assert api_latency.jit_cpu_s(jvm) > 0


def test_the_warm_up_stops_once_a_pass_sees_the_jit_idle(emulators):
    jvm = api_latency.emulator_jvm(emulators)
    passes, jit = api_latency.warm_up(lambda _: time.sleep(0.5), jvm=jvm, limit_s=20)
    # Passes that give the emulator no work let its compiler go quiet.
    assert jit < api_latency.JIT_SETTLED_CORES
    assert 1 <= passes < 40


def test_the_warm_up_gives_up_at_its_limit(emulators):
    jvm = api_latency.emulator_jvm(emulators)
    started = time.monotonic()
    passes, _ = api_latency.warm_up(lambda _: None, jvm=jvm, limit_s=0)
    assert passes == 1 and time.monotonic() - started < 5
