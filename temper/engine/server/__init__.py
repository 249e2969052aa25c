"""temper's engine server: SGLang's native HTTP API plus OpenAI's, over the built-in `LLMEngine`.

Start one with ``temper serve --model DIR`` or ``python -m temper.engine.server --model DIR``; in a
test or another process use `ServerThread`. Trainers push weights with `WeightBroadcaster`
(distributed) or `encode_tensor_payload` (``/update_weights_from_tensor``). Names are imported
lazily, so that importing `server_args` (for ``temper --help``) does not load torch.
"""

import importlib

_EXPORTS = {
    "ServerArgs": "server_args", "ServerThread": "launch", "build_state": "launch", "run_server": "launch",
    "WeightBroadcaster": "weight_update", "encode_tensor_payload": "weight_update",
}
__all__ = ["ServerArgs", "ServerThread", "WeightBroadcaster", "build_state", "encode_tensor_payload", "run_server"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'temper.engine.server' has no attribute {name!r}")
    return getattr(importlib.import_module(f"temper.engine.server.{_EXPORTS[name]}"), name)
