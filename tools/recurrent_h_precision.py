"""Which recurrent h is more accurate for the 16-bit kernels: float32 h inside a layer (what they
keep) or h rounded to the 16-bit type at every step? Both cost the same (the products read float32
h either way; the bfloat16 dot-product tile rounds its operand itself), so the measure is accuracy:
the low-precision reference (fastrnn.reference, storage=...) run both ways against float64, mean
relative error of the output, dx and dW_hh over 3 seeds (T=50, B=8, I=32, H=64).

    python tools/recurrent_h_precision.py      (from the repository root; needs ml_dtypes)
"""
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "tests", "kernels"), os.path.join(ROOT, "tests")]
import test_storage16 as t  # noqa: E402
from fastrnn.reference import stack  # noqa: E402
orig = stack._cell_forward_fn
res={}
for n,dt in t.DTYPES.items():
  q = stack._rounding(n)
  for cell in ("rnn_tanh","lstm","gru"):
    for variant in ("fp32 h","16-bit h"):
        if variant=="16-bit h":
            def patched(cell_, options, w, _o=orig):
                f=_o(cell_, options, w)
                def g(gi,gh,h,c):
                    hn,cn,cache=f(gi,gh,h,c); return q(hn),cn,cache
                return g
            stack._cell_forward_fn = patched
        else:
            stack._cell_forward_fn = orig
        errs=[]
        for seed in range(3):
            keep = stack._cell_forward_fn; stack._cell_forward_fn = orig
            _, _, exact = t.run_both(cell, dt, 50, 8, 32, 64, 1, False, False, seed=seed)
            stack._cell_forward_fn = keep
            _, _, lowp = t.run_both(cell, dt, 50, 8, 32, 64, 1, False, False, seed=seed, storage=n)
            errs.append([t.relative_error(r,e) for (nm,r,e),(_,_,_) in zip(t.quantities(lowp,exact), t.quantities(lowp,exact)) if e is not None and nm in ("output","dx","dw_hh[0]")])
        res[(n,cell,variant)]=np.mean(errs,axis=0)
stack._cell_forward_fn = orig
for k,v in res.items(): print(k, "output %.2e dx %.2e dW_hh %.2e"%tuple(v))
