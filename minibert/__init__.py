"""Mini-BERT: a BERT masked-LM with every forward and backward pass written by hand, on the array API."""
from minibert.api import classify_logits, classify_loss_and_grads, loss_and_grads, mlm_logits
from minibert.classify import classify_forward_backward, classify_metrics
from minibert.config import BertConfig
from minibert.model import forward_backward
from minibert.params import init_params, param_shapes

__all__ = ["BertConfig", "init_params", "param_shapes", "mlm_logits", "loss_and_grads", "forward_backward",
           "classify_logits", "classify_loss_and_grads", "classify_forward_backward", "classify_metrics"]
