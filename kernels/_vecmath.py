r"""Elementary functions LLVM can vectorise, plain Python (CPU kernels, `_soa`).

A call to libm (``math.log``, ``math.asin``) inside a loop stops LLVM's loop vectoriser, and numba
on this platform has no vector math library (no SVML). These are fdlibm's rational approximations
written with arithmetic, one square root or none, one division and selects, so that they vectorise
with the loop around them: `_log` within 1 ulp, `_asin` within a few ulp of libm, `_asinf` (float32,
for float32 states, whose spec takes the arcsin in float32) within 4 float32 ulp (tested against
NumPy; the kernels' tolerance against the specification is orders wider). `_f64_bits` and
`_bits_f64` are bit casts: pure-Python here, LLVM bitcasts when `_soa.build` binds the CPU module's
intrinsics (``sqrt`` likewise becomes LLVM's intrinsic).
"""
from __future__ import annotations

import math
import struct

import numpy as np

sqrt = math.sqrt


def _f64_bits(x):
    """The bits of float64 ``x`` as int64 (`build` binds an LLVM bitcast)."""
    return struct.unpack("<q", struct.pack("<d", x))[0]


def _bits_f64(i):
    """The float64 with bits ``i`` (`build` binds an LLVM bitcast)."""
    return struct.unpack("<d", struct.pack("<q", i))[0]


# fdlibm e_log.c: ln x = k ln2 + ln(1+f), 1+f in [sqrt(2)/2, sqrt(2)), ln(1+f) = 2s + s R(s^2)
# with s = f/(2+f); error < 1 ulp
_LN2_HI, _LN2_LO = 6.93147180369123816490e-01, 1.90821492927058770002e-10
_LG1, _LG2, _LG3 = 6.666666666666735130e-01, 3.999999999940941908e-01, 2.857142874366239149e-01
_LG4, _LG5 = 2.222219843214978396e-01, 1.818357216161805012e-01
_LG6, _LG7 = 1.531383769920937332e-01, 1.479819860511658591e-01


def _log(x):
    r"""$\ln x$ for a positive normal float64 ``x``; ``inf`` and NaN pass through (the twin's
    $\log(\max(\|\delta\|,\text{tiny})/\epsilon\rho)$ never sees 0, negatives or subnormals)."""
    bits = _f64_bits(x)
    e = ((bits >> 52) & 0x7FF) - 1023
    m = _bits_f64((bits & 0x000FFFFFFFFFFFFF) | 0x3FF0000000000000)   # x = m 2^e, m in [1, 2)
    big = m > 1.4142135623730951
    m = 0.5 * m if big else m
    k = float(e + 1 if big else e)
    f = m - 1.0
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    r = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7))) + w * (_LG2 + w * (_LG4 + w * _LG6))
    hfsq = 0.5 * f * f
    y = k * _LN2_HI - ((hfsq - (s * (hfsq + r) + k * _LN2_LO)) - f)
    return y if x < math.inf else x


# fdlibm e_asin.c: asin x = x + x R(x^2) on [0, 1/2]; above, asin x = pi/2 - 2 asin sqrt((1-x)/2)
# (fdlibm's extra-precise split on [1/2, 0.975) is left out: a few ulp there)
_PIO2_HI, _PIO2_LO = 1.57079632679489655800e+00, 6.12323399573676603587e-17
_PS0, _PS1, _PS2 = 1.66666666666666657415e-01, -3.25565818622400915405e-01, 2.01212532134862925881e-01
_PS3, _PS4, _PS5 = -4.00555345006794114027e-02, 7.91534994289814532176e-04, 3.47933107596021167570e-05
_QS1, _QS2 = -2.40339491173441421878e+00, 2.02094576023350569471e+00
_QS3, _QS4 = -6.88283971605453293030e-01, 7.70381505559019352791e-02


def _asin(x):
    r"""$\arcsin x$ for float64 ``x`` in $[0, 1]$ (the half chord of the angle, T6), one rational
    approximation for both ranges (one division, one square root, selects)."""
    small = x < 0.5
    z = x * x if small else 0.5 * (1.0 - x)
    s = x if small else sqrt(z)
    p = z * (_PS0 + z * (_PS1 + z * (_PS2 + z * (_PS3 + z * (_PS4 + z * _PS5)))))
    q = 1.0 + z * (_QS1 + z * (_QS2 + z * (_QS3 + z * _QS4)))
    a = s + s * (p / q)
    return a if small else _PIO2_HI - (2.0 * a - _PIO2_LO)


# FreeBSD e_asinf.c: the same scheme in float32, R(z) = z (p0 + z (p1 + z p2)) / (1 + z q1)
_F = np.float32
_PS0F, _PS1F, _PS2F = _F(1.6666586697e-01), _F(-4.2743422091e-02), _F(-8.6563630030e-03)
_QS1F, _HALFF, _ONEF, _TWOF = _F(-7.0662963390e-01), _F(0.5), _F(1.0), _F(2.0)
_PIO2F_HI, _PIO2F_LO = _F(1.5707963705e+00), _F(-4.3711388287e-08)


def _asinf(x):
    r"""$\arcsin x$ for float32 ``x`` in $[0, 1]$, in float32 (as `_asin`)."""
    small = x < _HALFF
    z = x * x if small else _HALFF * (_ONEF - x)
    s = x if small else sqrt(z)
    p = z * (_PS0F + z * (_PS1F + z * _PS2F))
    a = s + s * (p / (_ONEF + z * _QS1F))
    return a if small else _PIO2F_HI - (_TWOF * a + _PIO2F_LO)

