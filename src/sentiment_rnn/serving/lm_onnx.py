"""Generation from the exported language model (`export.lm_onnx`) through onnxruntime.

`OnnxStepper` is a `core.generate.Stepper`: the recurrent state travels in and out of each
call, so greedy decoding gives the same tokens as the torch model.
"""

from pathlib import Path
from typing import Any

import numpy as np

from sentiment_rnn.errors import UserError
from sentiment_rnn.serving.contract import read_props
from sentiment_rnn.serving.session import SessionConfig, create_session

KIND = "lm-step"  # metadata `kind` of the step graphs


class OnnxStepper:
    def __init__(self, path: Path, config: SessionConfig | None = None) -> None:
        props = read_props(path)
        if props.get("kind") != KIND:
            raise UserError(f"{path} is not an exported language model (kind {props.get('kind')})")
        self.props = props
        self.arch = props["arch"]
        self.hidden = int(props["hidden_size"])
        # one token per call: a GPU's launch cost per step outweighs its speed here
        self.session = create_session(path, config or SessionConfig(providers=("cpu",)))
        self.states = [i.name for i in self.session.get_inputs()][1:]

    @property
    def tokenizer_sha256(self) -> str:
        return self.props["tokenizer_sha256"]

    def start(self, batch: int) -> Any:
        return [np.zeros((1, batch, self.hidden), dtype=np.float32) for _ in self.states]

    def step(self, tokens: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        feed = {"token": tokens.astype(np.int64), **dict(zip(self.states, state, strict=True))}
        log_probs, *state = self.session.run(None, feed)
        return log_probs, state
