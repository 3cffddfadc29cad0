"""Signal processing: STFT (torch.stft) and MelWeightMatrix (a small helper)."""
from __future__ import annotations

import numpy as np

from .. import checks
from ..registry import register_op


def _scalar(ctx, i: int) -> str:
    c = ctx.const(i)
    if c is not None:
        if c.size != 1:
            raise checks.Contradiction(f"input {i} must be a scalar, got shape {tuple(c.shape)}")
        return ctx.lit(int(c.reshape(-1)[0]))
    return f"int({ctx.x(i)})"


STFT = '''
def stft(x, step, window=None, length=None, onesided=True):
    # ONNX STFT on (batch, samples, 1 or 2): frames without centring or padding, (batch, frames, bins, 2) out.
    signal = torch.view_as_complex(x.contiguous()) if x.shape[-1] == 2 else x[..., 0]
    if length is None:
        length = signal.shape[-1] if window is None else window.shape[0]
    y = torch.stft(signal, length, hop_length=step, win_length=length, window=window, center=False,
                   onesided=onesided, return_complex=True)
    return torch.view_as_real(y.transpose(-1, -2)).to(x.dtype)
'''


@register_op("STFT", since=17)
def stft(ctx):
    fn = ctx.helper("stft", STFT)
    onesided = bool(ctx.attr("onesided", 1))
    shape = ctx.shape(0)
    if onesided and shape is not None and shape[-1] == 2:
        raise checks.Contradiction("attribute onesided=1 on a complex signal, whose spectrum is not symmetric")
    window = ctx.x(2) if ctx.has_input(2) else "None"
    length = _scalar(ctx, 3) if ctx.has_input(3) else "None"
    return f"{fn}({ctx.x(0)}, {_scalar(ctx, 1)}, {window}, {length}, onesided={onesided})"


MEL_WEIGHT_MATRIX = '''
def mel_weight_matrix(num_mel_bins, dft_length, sample_rate, lower_hertz, upper_hertz, dtype=torch.float32):
    # ONNX MelWeightMatrix: triangular filters of peak 1 between mel-spaced points, each point floored to
    # a DFT bin as the reference implementation does: (dft_length + 1) * hertz // sample_rate.
    bins, n = int(num_mel_bins), int(dft_length)
    log10 = torch.log(torch.tensor(10.0, dtype=torch.float64))
    low, high = (2595 * torch.log1p(torch.as_tensor(f).double() / 700) / log10 for f in (lower_hertz, upper_hertz))
    mel = torch.arange(bins + 2, dtype=torch.float64) * ((high - low) / (bins + 2)) + low
    points = ((n + 1) * (700 * torch.expm1(mel / 2595 * log10)) // float(sample_rate)).long()
    left, centre, right = points[:-2], points[1:-1], points[2:]
    j = torch.arange(n // 2 + 1).unsqueeze(1)
    rising = torch.where(centre > left, (j - left) / (centre - left).clamp(min=1), 1.0)
    falling = (right - j) / (right - centre).clamp(min=1)
    out = torch.where((j >= centre) & (j < right), falling, torch.where((j >= left) & (j <= centre), rising, 0.0))
    return out.to(dtype)
'''


@register_op("MelWeightMatrix", since=17)
def mel_weight_matrix(ctx):
    fn = ctx.helper("mel_weight_matrix", MEL_WEIGHT_MATRIX)
    dtype = ctx.out_dtype(0)
    dtype = ctx.torch_dtype(dtype if dtype is not None else np.dtype(np.float32))
    args = ", ".join(ctx.x(i) for i in range(5))
    return f"{fn}({args}, dtype={dtype})"
