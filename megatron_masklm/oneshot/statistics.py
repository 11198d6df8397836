"""Calibration statistics of a linear layer's inputs, accumulated batch by batch."""
import torch


class InputStatistics:
    """Running sums over calibration tokens of a layer input x [tokens, I]: sum x_j^2 (Wanda)
    and the second moment H = 2/n X^T X (SparseGPT), in fp32 (fp64 sums are not needed at
    128 x 512 tokens; the average keeps H at the scale of one token)."""

    def __init__(self, inputs: int, *, hessian: bool = True, device=None):
        self.tokens = 0
        self.sq_norms = torch.zeros(inputs, dtype=torch.float32, device=device)
        self.hessian = (torch.zeros(inputs, inputs, dtype=torch.float32, device=device)
                        if hessian else None)

    def add(self, x: torch.Tensor) -> None:
        """Fold in a batch of layer inputs of any leading shape [..., I]."""
        x = x.detach().reshape(-1, x.shape[-1]).float()
        if x.shape[-1] != self.sq_norms.shape[0]:
            raise ValueError(f"inputs of width {x.shape[-1]} do not match {self.sq_norms.shape[0]}")
        count = x.shape[0]
        self.sq_norms += x.pow(2).sum(0)
        if self.hessian is not None:
            total = self.tokens + count
            self.hessian.mul_(self.tokens / total)
            self.hessian.addmm_(x.t(), x, alpha=2.0 / total)
        self.tokens += count
