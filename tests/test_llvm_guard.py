"""Triton is blocked only when torch or Triton is imported into a process that has libLLVM loaded."""

import sys

from napari_mobilesamv2.napari import _llvm_guard


def test_the_gate_blocks_triton_once_libllvm_is_loaded(monkeypatch):
    gate = _llvm_guard._TritonGate()
    monkeypatch.delitem(sys.modules, "triton", raising=False)
    monkeypatch.setattr(_llvm_guard, "_llvm_loaded", lambda: False)
    assert gate.find_spec("torch") is None and "triton" not in sys.modules  # no window yet: left alone
    monkeypatch.setattr(_llvm_guard, "_llvm_loaded", lambda: True)
    assert gate.find_spec("numpy") is None and "triton" not in sys.modules  # other imports: left alone
    assert gate.find_spec("torch") is None  # the gate never finds a module itself
    assert "triton" in sys.modules and sys.modules["triton"] is None  # import triton now fails


def test_the_gate_is_installed_once():
    _llvm_guard.block_triton_if_llvm_loaded()
    _llvm_guard.block_triton_if_llvm_loaded()
    assert sum(isinstance(f, _llvm_guard._TritonGate) for f in sys.meta_path) <= 1
