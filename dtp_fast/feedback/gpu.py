"""The GPU policy of the ``triton`` and ``cuda`` backends, in one place.

Both backends run their feedback phase inside :meth:`GpuPolicy.gpu_context`:

- **Device.** The tensors' CUDA device is made the current one for the phase
  (``torch.cuda.device``), so that Triton launches, synchronisations, CUDA
  graphs and their capture streams bind to it, not to device 0 (the compiled
  CUDA ops guard their device themselves).
- **TF32.** cuDNN convolutions and cuBLAS matrix products of the phase run in
  TF32 or in IEEE float32, by one switch: ``tf32`` (``None``, the default: TF32
  on compute capability 8.0 and newer unless ``DTP_FAST_TF32=0``). The switch
  goes through torch's ``fp32_precision`` API only: the legacy ``allow_tf32``
  flags raise on torch >= 2.9 once any code has used the new API.
- **Determinism.** ``deterministic=True`` (or ``DTP_FAST_DETERMINISTIC=1``
  when it is left at ``None``, the default) makes cuDNN pick deterministic
  algorithms (``torch.backends.cudnn.deterministic``, benchmark off); the
  backends' own kernels use no float atomics in any case, so a run is then
  bit-reproducible from run to run on the same GPU. Its cost is unmeasured
  (no GPU has been available): cuDNN's deterministic weight-gradient
  algorithms can be slower.
- **Loss precision.** Reported losses are reductions in float32 (float64
  tensors: float64); the ``cuda`` backend's fused loss sums in float64.
- **Opt-in chain variants** (off by default until a GPU has timed them):
  ``pooled_chain`` (``DTP_FAST_POOLED_CHAIN=1``) runs the chain of a layer
  behind a max-pool whose windows tile the plane on the ``sparse`` family's
  Triton kernels, which read dh2 at pooled resolution with the switches
  instead of unpooling it for cuDNN (:mod:`dtp_fast.ops.triton.sparse`; the
  ``cuda`` backend shares them, so there is one GPU implementation of that
  matrix product); ``layer_streams`` (``DTP_FAST_LAYER_STREAMS=1``) runs each
  conv layer's whole chain on its own CUDA stream (:meth:`GpuPolicy.on_streams`).

Everything here is plain Python around torch's flags, so it is tested on a CPU.
"""
from __future__ import annotations

import contextlib
import os

import torch

__all__ = ["GpuPolicy", "cuda_device", "fp32_precision", "full_float32", "cudnn_deterministic", "tf32_default"]


def _env_off(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("0", "false", "no", "off")


def _opt_in(value: bool | None, env: str) -> bool:
    """An opt-in switch: ``value``, or when None whether the environment variable ``env`` says yes."""
    if value is None:
        return os.environ.get(env, "").strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def tf32_default(device) -> bool:
    """TF32 by default: on CUDA devices of compute capability >= 8.0, unless ``DTP_FAST_TF32=0``."""
    device = torch.device(device)
    return (device.type == "cuda" and not _env_off("DTP_FAST_TF32")
            and torch.cuda.get_device_capability(device) >= (8, 0))


def cuda_device(device):
    """A context in which ``device`` (a CUDA device) is the current one; nothing for other devices."""
    device = torch.device(device)
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


@contextlib.contextmanager
def fp32_precision(tf32: bool):
    """cuDNN convolutions and cuBLAS matrix products in TF32 (``tf32=True``) or IEEE float32 inside the
    context, through torch's ``fp32_precision`` flags; the previous values are restored after."""
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    saved = conv.fp32_precision, matmul.fp32_precision
    value = "tf32" if tf32 else "ieee"
    conv.fp32_precision = matmul.fp32_precision = value
    try:
        yield
    finally:
        conv.fp32_precision, matmul.fp32_precision = saved


@contextlib.contextmanager
def full_float32():
    """No TF32 anywhere inside: torch's own convolutions and matrix products (``reference``, ``torch``, the
    activations) and the GPU backends' default (``DTP_FAST_TF32=0``). For comparisons at float32 tolerances."""
    saved = os.environ.get("DTP_FAST_TF32")
    os.environ["DTP_FAST_TF32"] = "0"
    try:
        with fp32_precision(False):
            yield
    finally:
        if saved is None:
            os.environ.pop("DTP_FAST_TF32", None)
        else:
            os.environ["DTP_FAST_TF32"] = saved


@contextlib.contextmanager
def cudnn_deterministic(on: bool):
    """cuDNN's deterministic algorithms (and no benchmark search) inside the context when ``on``."""
    if not on:
        yield
        return
    cudnn = torch.backends.cudnn
    saved = cudnn.deterministic, cudnn.benchmark
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark = saved


class GpuPolicy:
    """Mixin of the GPU backends (listed before the engine class they extend): the ``tf32`` and
    ``deterministic`` switches, and the feedback phase run inside :meth:`gpu_context` (see the module doc)."""

    tf32: bool | None = None
    deterministic: bool | None = None
    pooled_chain: bool | None = None
    layer_streams: bool | None = None

    def deterministic_enabled(self) -> bool:
        """Whether cuDNN's deterministic algorithms are asked for (``DTP_FAST_DETERMINISTIC=1`` when ``None``)."""
        return _opt_in(self.deterministic, "DTP_FAST_DETERMINISTIC")

    def pooled_chain_enabled(self) -> bool:
        """Whether pooled layers' chains run on the ``sparse`` Triton kernels (``DTP_FAST_POOLED_CHAIN=1``
        when ``pooled_chain`` is None)."""
        return _opt_in(self.pooled_chain, "DTP_FAST_POOLED_CHAIN")

    def layer_streams_enabled(self) -> bool:
        """Whether the conv layers' chains run side by side on their own streams (``DTP_FAST_LAYER_STREAMS=1``
        when ``layer_streams`` is None)."""
        return _opt_in(self.layer_streams, "DTP_FAST_LAYER_STREAMS")

    def tf32_enabled(self, device) -> bool:
        """Whether the convolutions and matrix products of a run on ``device`` may use TF32."""
        if torch.device(device).type != "cuda":
            return False
        return tf32_default(device) if self.tf32 is None else bool(self.tf32)

    @contextlib.contextmanager
    def gpu_context(self, device):
        """The feedback phase's device, TF32 and determinism settings (nothing on a CPU)."""
        device = torch.device(device)
        if device.type != "cuda":
            yield
            return
        with cuda_device(device), fp32_precision(self.tf32_enabled(device)), cudnn_deterministic(self.deterministic_enabled()):
            yield

    def conv_chain(self, layer, d2):
        """With ``pooled_chain``: a layer behind a max-pool whose windows tile the plane, with a stride-1
        feedback convolution of one group, through the ``sparse`` Triton kernels from the pooled d2;
        other layers: the engine's (unpool, then cuDNN)."""
        block, g = layer.block, layer.block.g_op
        if not (self.pooled_chain_enabled() and layer.switches is not None and block.pool[0] == block.pool[1]
                and block.pool[2] == (0, 0) and tuple(g.stride) == (1, 1) and g.groups == 1
                and tuple(g.output_padding) == (0, 0)):
            return super().conv_chain(layer, d2)
        from ..ops import triton as kernels

        if not kernels.available():
            raise RuntimeError(f"pooled_chain (DTP_FAST_POOLED_CHAIN) runs on Triton kernels, and "
                               f"{kernels.load_error()}; or leave it off")
        from ..ops.triton.sparse import pooled_conv_t, pooled_wgrad

        tf32 = self.tf32_enabled(layer.weight.device)
        plane, pool = block.pre_pool_shape[1:], block.pool[1]
        dr_y = pooled_conv_t(d2, layer.unpool_switches, layer.weight, pool, plane, g.padding, g.dilation,
                             layer.x.shape[2:], tf32=tf32)
        return dr_y, pooled_wgrad(d2, layer.unpool_switches, dr_y, pool, plane, g.kernel_size, g.padding,
                                  g.dilation, tf32=tf32)

    def on_streams(self, device, items, run) -> None:
        """``run(item)`` for every item, each on its own CUDA stream of ``device``, forked from the current
        stream and joined back to it at the end (in a CUDA graph's capture too); in order off CUDA. The
        side streams are kept per device and reused."""
        device = torch.device(device)
        if device.type != "cuda":
            for item in items:
                run(item)
            return
        main = torch.cuda.current_stream(device)
        streams = self.__dict__.setdefault("_side_streams", {}).setdefault(device, [])
        streams.extend(torch.cuda.Stream(device) for _ in range(len(items) - len(streams)))
        for item, side in zip(items, streams):
            side.wait_stream(main)
            with torch.cuda.stream(side):
                run(item)
        for side in streams[:len(items)]:
            main.wait_stream(side)

    def train(self, net, acts, switches, hparams, state, noise, step, report, memory_budget="default",
              sample_offset=0, reduce=None):
        with self.gpu_context(acts[0].device):
            return super().train(net, acts, switches, hparams, state, noise, step, report,
                                 memory_budget=memory_budget, sample_offset=sample_offset, reduce=reduce)
