"""Passes, one module each; `registry.PASSES` maps CLI names to `module:Class`."""

from spa_compiler.passes.registry import PASSES

__all__ = ["PASSES"]
