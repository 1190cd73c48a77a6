"""Where tensors run: the device a config names, bf16 autocast on CUDA, timing barriers."""

import torch

from sentiment_rnn.errors import UserError


def resolve_device(name: str, key: str = "device") -> torch.device:
    """`auto` (CUDA when visible, else CPU), `cpu` or `cuda`; `key` names the param in errors."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{key} is 'cuda' but no CUDA GPU is visible: set it to 'auto' or 'cpu'")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"{key} must be auto, cpu or cuda, got {name!r}") from None


def autocast(device: torch.device, bf16: bool = True) -> torch.autocast:
    """bf16 autocast on CUDA (cuDNN kernels run in bf16); a no-op on the CPU."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and bf16)


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so a timer measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
