"""One module per backend; each exports ``BACKEND``, a :class:`qcmb_fractal.execute.base.Backend` subclass."""
