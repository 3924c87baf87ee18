"""The pass registry: CLI name -> "module:Class", one line per pass (imported lazily)."""

from __future__ import annotations

PASSES: dict[str, str] = {
    "cleanup": "spa_compiler.passes.cleanup:CleanupPass",
    "prune-magnitude": "spa_compiler.passes.prune_magnitude:PruneMagnitudePass",
    "prune-spa": "spa_compiler.passes.prune_spa:PruneSpaPass",
    "prune-ziplm": "spa_compiler.passes.prune_ziplm:PruneZipLMPass",
}
