"""An independent reference for the distillation loss: float64, unsharded, torch.log_softmax."""
import torch


def reference_kl(student, teacher, temperature, vocab_size):
    """T^2 KL(softmax(t/T) || softmax(s/T)) in float64 over the first vocab_size columns."""
    s = student[..., :vocab_size].double() / temperature
    t = teacher[..., :vocab_size].double() / temperature
    log_s, log_t = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
    return (log_t.exp() * (log_t - log_s)).sum(-1) * temperature ** 2
