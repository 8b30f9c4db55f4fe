"""Standard multi-head attention written in Python with ellipse's ops, as an attention kind of one's own.

It builds the same parameters as the library's standard attention, in the same order and from the same stream,
and runs the same ops (the fused attention op where the library fuses), so a model of this kind trains exactly
as one of the built-in "standard" kind: python/tests/test_attention_kind.py checks it, and
bench/python_step.py --attention-in-python times what writing the layer in Python costs.

    import standard_attention
    standard_attention.register()          # the kind "py-standard"
    ellipse.models.train_gpt(..., attention="py-standard")
"""
import math

import ellipse
from ellipse import nn

KIND = "py-standard"


class PythonStandard(nn.AttentionLayer):
    """Multi-head attention: qkv, the scaled dot products (fused where the library fuses), proj."""

    def __init__(self, slot):
        super().__init__()
        self.heads, self.head_dim = slot.heads, slot.dim // slot.heads
        self.qkv = self.register_module("qkv", nn.Linear(slot.dim, 3 * slot.dim, gen=slot.gen, init=slot.init))
        self.proj = self.register_module("proj", nn.Linear(slot.dim, slot.dim, gen=slot.gen, init=slot.init))

    def forward(self, x, causal, v_prev):
        batch, n, dim = x.shape
        heads = ellipse.permute(ellipse.view(self.qkv(x), [batch, n, 3, self.heads, self.head_dim]), [2, 0, 3, 1, 4])
        scale = 1 / math.sqrt(self.head_dim)
        if not self.keeps_attention and ellipse.fused_attention_preferred(x.device, x.dtype, self.head_dim, causal):
            out = ellipse.scaled_dot_product_attention_qkv(heads, None, scale, causal)
        else:
            q, k, v = (ellipse.select(heads, 0, i) for i in range(3))
            probabilities = ellipse.scaled_softmax(ellipse.matmul(q, ellipse.transpose(k, -1, -2)), scale, causal)
            self.record_attention(probabilities)
            out = ellipse.matmul(probabilities, v)
        out = ellipse.reshape(ellipse.permute(out, [0, 2, 1, 3]), [batch, n, dim])
        return self.proj(out), ellipse.select(heads, 0, 2)


def register():
    """Registers PythonStandard as the kind "py-standard" (once per process) and returns the name."""
    if KIND not in nn.attention_kinds():
        nn.register_attention(KIND, PythonStandard)
    return KIND
