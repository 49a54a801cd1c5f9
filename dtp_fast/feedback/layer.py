"""The per-layer state of the precomputing backends: :class:`LayerState`.

A fast backend (a subclass of :class:`dtp_fast.feedback.TorchBackend`, see
README "Write a backend") receives one :class:`LayerState` per trainable
feedback layer and batch in its hooks, and may read and change the attributes
documented on the class; everything else about it is private.
"""
from __future__ import annotations

import math

import torch

from ..blocks import ACTIVATIONS
from ..noise import NoiseBlock

__all__ = ["LayerState"]


class LayerState:
    """One feedback layer's L-DRL training on one batch (ALGORITHM.md section 5).

    Created by :meth:`TorchBackend.train` for every trainable feedback layer
    ``G_index`` and handed to the backend's hooks. Read-only for hooks:

    - ``block`` (the :class:`~dtp_fast.Block`), ``index`` (i of G_i, 1-based),
      ``name``, ``hp`` (its :class:`~dtp_fast.feedback.LayerHParams`);
    - ``x`` = s_{i-1} (in ``memory_format``), ``y`` = s_i, ``switches`` (I0 or
      None), ``h0`` = h(y; I0) (in ``memory_format``), ``a0`` = act(y) (at the
      block's output resolution: pooled behind a max-pool), ``batch`` (B),
      ``scale`` = 1 / (samples * B), ``linear`` (a Linear feedback block);
    - ``memory_format``: channels_last for conv blocks (oneDNN's convolutions
      and weight gradients are up to 2x faster in it on CPUs), contiguous for
      Linear blocks;
    - ``x_noisy``: while a chunk is precomputed (in :meth:`TorchBackend.conv_precompute`),
      x + dx of its iterations, (n*S*B, *x);
    - the current chunk: iterations ``start .. start + held - 1`` are
      precomputed, with ``A`` (held, *V) and ``stored`` (conv: what
      :meth:`TorchBackend.conv_chain` takes, by default dh2 of each iteration
      at the block's output resolution, ``act(y + dy) - a0`` (held, S*B, *y):
      behind a max-pool 4x smaller than h, and unpooled with the clean
      switches by :meth:`unpool` where needed) or ``C`` (Linear: (held,
      d_out, d_out)).

    Read-write for hooks:

    - ``weight``: the working copy of the feedback weight V (in
      ``memory_format``) and ``momentum_buffer``: its momentum buffer; both are
      written back to the network and the :class:`FeedbackState` by
      :meth:`finish`. A hook may replace them by tensors of the same shape,
      dtype and values (e.g. static buffers of a CUDA graph);
    - ``losses``: append each reported iteration's loss (a 0-dim tensor);
    - ``next_k``: the next iteration to run; set it past the iterations a hook
      ran itself;
    - ``plan``: a backend's per-batch data for this layer (None until a hook
      sets it; the ``cpp`` backend keeps its switch index lists there);
    - ``unpool_switches``: the clean switches repeated over the S noise
      samples, what :meth:`unpool` places dh2 at (None without a pool); a
      hook may replace it by an equal tensor (the ``triton`` backend's CUDA
      graph reads it from a static buffer).

    Methods for hooks: :meth:`prepare` (precompute a chunk), :meth:`chunks`, :meth:`loss_from`,
    :meth:`iterate`, :meth:`gradient`, :meth:`apply`, :meth:`conv_t`, :meth:`wgrad`, :meth:`unpool`.
    """

    def __init__(self, engine, block, index, name, hp, x, y, switches, state, noise, step, chunk, offset=0):
        self.engine, self.block, self.index, self.name, self.hp = engine, block, index, name, hp
        self.linear = block.kind == "linear"
        fmt = torch.contiguous_format if self.linear else torch.channels_last
        self.memory_format = fmt
        self.x, self.y, self.switches = x.contiguous(memory_format=fmt), y, switches
        self.noise, self.step, self.chunk, self.offset = noise, step, chunk, offset
        self._V = block.g_op.weight
        self._buf = state.buffer(name, "weight", self._V)
        self._c = block.g_op.bias
        self._cbuf = None if self._c is None else state.buffer(name, "bias", self._c)
        self.weight = self._V.detach().clone(memory_format=fmt)
        self.momentum_buffer = self._buf.clone(memory_format=fmt)
        self.h0 = block.h(y, switches).contiguous(memory_format=fmt)
        self.a0 = ACTIVATIONS[block.act](y)
        self.plan = None
        # the switches of the S*B rows of dh2 (S noise samples of the batch), for unpool
        self.unpool_switches = None if switches is None else switches.repeat(
            hp.samples, *([1] * (switches.dim() - 1)))
        self.batch = x.shape[0]
        self.scale = 1.0 / (hp.samples * self.batch)
        self.start = 0          # first iteration held in the current chunk
        self.held = 0           # iterations held
        self.next_k = 0         # next iteration to run
        self.losses = []
        self.A = self.C = self.stored = self.x_noisy = None
        # multiply-adds of one iteration's transposed convolution (or matrix product): for scheduling
        self.cost = self._V.numel() * hp.samples * self.batch * (
            1 if self.linear else math.prod(block.pre_pool_shape[1:]))

    def remaining_cost(self) -> int:
        return (self.hp.iterations - self.next_k) * self.cost

    def run_chunk(self, report: str) -> None:
        """Precompute the next chunk of iterations and run them (the backend's ``run_chunk`` hook)."""
        self.prepare(self.next_k)
        self.engine.run_chunk(self, report)

    def loss_from(self, report: str) -> int:
        """The position in the current chunk of its first iteration whose loss is reported (``held``:
        none)."""
        if report == "all":
            return 0
        last = self.hp.iterations - 1
        return last - self.start if report == "last" and self.start <= last < self.start + self.held else self.held

    def chunks(self, report: str):
        """Precompute the layer's chunks in turn, for backends that run a whole chunk in one
        kernel; yields ``(k0, n, loss_from)``: the chunk's iterations ``k0 .. k0 + n - 1`` and
        the position in it of the first iteration whose loss is reported (``n``: none)."""
        iters, k = self.hp.iterations, 0
        while k < iters:
            self.prepare(k)
            n = self.held
            yield k, n, self.loss_from(report)
            k += n
            self.next_k = k

    def finish(self) -> None:
        """Write the trained weight and its momentum buffer back, and step the bias."""
        self._V.copy_(self.weight)
        self._buf.copy_(self.momentum_buffer)
        self._step_bias()

    @torch.no_grad()
    def _step_bias(self) -> None:
        """The bias c after the layer's iterations, as ``torch.optim.SGD`` (what ``reference`` does).

        Its L-DRL gradient is exactly 0, so with weight decay wd each iteration is
        ``b = m b + wd c; c = c - lr b``: a linear map of (c, b) with the same 2x2 matrix at
        every iteration. Its n-th power (n = the iterations run) applied once gives the result of
        n steps in a few elementwise operations (equal to stepping n times up to rounding). Without
        weight decay and with a zero buffer (the usual case) nothing changes.
        """
        if self._c is None:
            return
        hp = self.hp
        one = ((1.0 - hp.lr * hp.weight_decay, -hp.lr * hp.momentum), (hp.weight_decay, hp.momentum))
        a, b, c, d = 1.0, 0.0, 0.0, 1.0          # the identity, times ``one`` hp.iterations times
        for _ in range(hp.iterations):
            (p, q), (r, t) = one
            a, b, c, d = p * a + q * c, p * b + q * d, r * a + t * c, r * b + t * d
        if (a, b, c, d) == (1.0, 0.0, 0.0, 1.0):
            return
        bias, buf = self._c.detach(), self._cbuf
        new_bias = bias * a + buf * b
        buf.mul_(d).add_(bias, alpha=c)
        bias.copy_(new_bias)

    # --------------------------------------------------------------- precompute
    def prepare(self, k0: int) -> None:
        """Precompute iterations k0 .. k0 + n - 1 (n: the planned chunk, or fewer at the end):
        ``A`` and ``C`` or ``stored``, in one batched pass through the backend's hooks."""
        hp, B = self.hp, self.batch
        self.A = self.C = self.stored = None      # the previous chunk's, no longer needed
        n = min(self.chunk, hp.iterations - k0)
        SB = hp.samples * B
        fmt = self.memory_format

        def noise_of(which, like):
            return NoiseBlock(self.noise, self.step, self.index, which, k0, n, hp.samples, self.offset,
                              tuple(like.shape))
        dx, self.x_noisy = self.engine.noisy_inputs(noise_of("x", self.x), hp.noise, self.x, fmt)
        dx = dx.unflatten(0, (-1, B))
        eps_y = noise_of("y", self.y)
        if self.linear:
            dh1 = self.engine.dh1(self.block, self.x_noisy, self.h0)        # (n*S*B, *h)
            dh2 = self.engine.dh2(self.block, self.y, eps_y, hp.noise, self.a0)
            dx, dh1, dh2 = (t.reshape(n, SB, -1) for t in (dx, dh1, dh2))
            self.A = torch.bmm(dx.transpose(1, 2), dh1)      # (n, d_in, d_out)
            self.C = torch.bmm(dh2.transpose(1, 2), dh2)     # (n, d_out, d_out)
        else:
            self.A, self.stored = self.engine.conv_precompute(self, dx, eps_y, n)
        self.x_noisy = None
        self.start, self.held = k0, n

    # --------------------------------------------------------------- the chain
    def unpool(self, d2):
        """One iteration's stored dh2 (S*B, *y) at h's resolution: placed at the clean switches
        (a view of ``d2`` itself without a pool)."""
        if self.switches is None:
            return d2
        return self.block.unpool(d2, self.unpool_switches)

    def conv_t(self, h):
        """The feedback convolution without bias, ``V * h``, with the working weight."""
        g = self.block.g_op
        return torch.nn.functional.conv_transpose2d(h, self.weight, None, g.stride, g.padding, g.output_padding, 1,
                                                    g.dilation)

    def wgrad(self, inp, grad_out, out=None):
        """Weight gradient of conv_transpose2d(inp, V) given grad_out: by adjointness,
        the weight gradient of conv2d(grad_out, V) given inp; into ``out`` (a tensor shaped
        and laid out as V) when given.

        On a CPU, for planes of at most twice as many positions as the kernel has taps (a
        third or more of the taps then fall on the zero border: SimpleVGG's 4x4 and 2x2
        planes), one matrix product over the patches of grad_out instead, measured 1.1-2.2x
        faster than oneDNN's weight gradient there at width 0.25 and 1.4-6.4x at width 1
        (slower from 8x8 on)."""
        g = self.block.g_op
        kh, kw = g.kernel_size
        if inp.device.type == "cpu" and g.groups == 1 and inp.shape[2] * inp.shape[3] <= 2 * kh * kw:
            return _wgrad_patches(inp, grad_out, kh, kw, g.stride, g.padding, g.dilation, out)
        grad = torch.ops.aten.convolution_backward(
            inp, grad_out, self.weight, None, g.stride, g.padding, g.dilation, False, [0, 0], 1,
            [False, True, False])[1]
        return grad if out is None else out.copy_(grad)

    def iterate(self, k: int, want_loss: bool) -> None:
        self.apply(self.gradient(k, want_loss), k)

    def gradient(self, k: int, want_loss: bool) -> torch.Tensor:
        """The gradient of iteration k (and its loss, appended to ``losses``, if wanted)."""
        if k >= self.start + self.held:
            self.prepare(k)
        j = k - self.start
        V, A = self.weight, self.A[j]
        if self.linear:
            quad = V @ self.C[j]                   # wgrad(dh2, V dh2)
            if want_loss:
                self.losses.append(self.scale * ((quad * V).sum() - 2 * (A * V).sum()))
        else:
            dr_y, quad = self.engine.conv_chain(self, self.stored[j])
            if want_loss:
                self.losses.append(self.engine.conv_loss(self, dr_y, A, V))
        return quad.sub_(A).mul_(2 * self.scale)

    def apply(self, grad: torch.Tensor, k: int) -> None:
        """The momentum-SGD step of iteration k with ``grad`` (changed in place)."""
        hp, V = self.hp, self.weight
        if hp.weight_decay:
            grad.add_(V, alpha=hp.weight_decay)
        self.momentum_buffer.mul_(hp.momentum).add_(grad)
        V.add_(self.momentum_buffer, alpha=-hp.lr)
        self.next_k = k + 1


def _wgrad_patches(out_grad, x, kh, kw, stride, padding, dilation, out=None):
    """The weight gradient of conv2d(x, W) (one group) given the gradient of its output,
    as (out_grad as rows) ^ T @ (the kh x kw patches of x as rows): (C_out, C_in, kh, kw)
    in channels_last strides, the layout of the feedback weight; written into ``out`` when
    given (the product straight into it when it has those strides)."""
    n, c_in, h, w = x.shape
    c_out, oh, ow = out_grad.shape[1:]
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = x.new_zeros(n, h + 2 * ph, w + 2 * pw, c_in)
    xp[:, ph:ph + h, pw:pw + w].copy_(x.permute(0, 2, 3, 1))
    s_n, s_h, s_w, s_c = xp.stride()
    patches = xp.as_strided((n, oh, ow, kh, kw, c_in), (s_n, s_h * sh, s_w * sw, s_h * dh, s_w * dw, s_c))
    rows = out_grad.permute(0, 2, 3, 1).reshape(n * oh * ow, c_out).t()
    patches = patches.reshape(n * oh * ow, kh * kw * c_in)
    if out is not None and out.permute(0, 2, 3, 1).is_contiguous():
        torch.mm(rows, patches, out=out.permute(0, 2, 3, 1).view(c_out, kh * kw * c_in))
        return out
    grad = (rows @ patches).view(c_out, kh, kw, c_in).permute(0, 3, 1, 2)
    return grad if out is None else out.copy_(grad)
