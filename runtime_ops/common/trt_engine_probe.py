"""Build a TensorRT engine from an ONNX file with the spa.ops plugins registered; run as a script so
that a TensorRT that aborts the process (TensorRT-RTX 1.7 on any plugin layer) cannot take the
caller down with it:

    python -m spa_compiler.runtime_ops.common.trt_engine_probe MODEL.onnx PLUGIN_LIB [CC]

Prints the builder's log lines, then one line `RESULT ok <bytes>` or `RESULT failed`. The exit
status is 0 when an engine was built, 1 when the builder refused; a crash shows as a signal.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    model, lib = argv[0], argv[1]
    cc = argv[2] if len(argv) > 2 else "8.9"
    from spa_compiler.latency.tensorrt import trt_module

    trt = trt_module()

    class Logger(trt.ILogger):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, sev: object, msg: str) -> None:  # printed at once: the process may abort
            print(f"[{str(sev).rsplit('.', 1)[-1]}] {msg}", flush=True)

    logger = Logger()
    registry = trt.get_plugin_registry()
    if registry.load_library(lib) is None:
        print(f"RESULT failed: could not load {lib}", flush=True)
        return 1
    names = sorted(
        f"{c.name}/{c.plugin_version}/{c.plugin_namespace}" for c in registry.all_creators
    )
    ours = [n for n in names if n.split("/")[0] in ("MonarchMatMul", "NMSparseMatMul")]
    print("CREATORS " + " ".join(ours), flush=True)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(model):
        errs = [parser.get_error(i).desc() for i in range(parser.num_errors)]
        print("RESULT failed: parser: " + "; ".join(errs), flush=True)
        return 1
    config = builder.create_builder_config()
    if hasattr(config, "set_compute_capability") and cc not in ("", "current"):
        config.num_compute_capabilities = 1
        config.set_compute_capability(getattr(trt.ComputeCapability, "SM" + cc.replace(".", "")), 0)
    plan = builder.build_serialized_network(network, config)
    print(f"RESULT ok {plan.nbytes}" if plan is not None else "RESULT failed: builder", flush=True)
    return 0 if plan is not None else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
