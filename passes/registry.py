"""The pass registry: CLI name -> "module:Class", one line per pass (imported lazily).

`ALIASES` keeps the names of earlier releases working: old name -> (new name, options it implies,
renamed options). `pipeline.parse` resolves them and logs the new spelling.
"""

from __future__ import annotations

PASSES: dict[str, str] = {
    "cleanup": "spa_compiler.passes.cleanup:CleanupPass",
    "prune-uniform": "spa_compiler.passes.prune_uniform:PruneUniformPass",
    "prune-to-budget": "spa_compiler.passes.prune_to_budget:PruneToBudgetPass",
    "sparsify-nm": "spa_compiler.passes.sparsify_nm:SparsifyNMPass",
    "substitute-monarch": "spa_compiler.passes.substitute_monarch:SubstituteMonarchPass",
}

ALIASES: dict[str, tuple[str, dict[str, str], dict[str, str]]] = {
    # prune-ziplm{uniform=true} is prune-uniform: see pipeline.resolve_alias
    "prune-ziplm": ("prune-to-budget", {}, {}),
    "prune-spa": ("prune-uniform", {"criterion": "magnitude", "min-units": "2"}, {}),
    # simple Conv/Gemm chains are a subset of the coupled-channel groups
    "prune-magnitude": ("prune-uniform", {"criterion": "magnitude", "min-units": "4"}, {"min-channels": "min-units"}),
}
