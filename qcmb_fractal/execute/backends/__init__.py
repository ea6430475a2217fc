"""One module per backend, each a :class:`qcmb_fractal.execute.base.Backend` subclass registered in
:data:`qcmb_fractal.execute.base.BACKENDS`."""
