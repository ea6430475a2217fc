"""Server side of the qcmb_manybody record type: ORM models, record socket, routes and the hooks into QCFractal."""
