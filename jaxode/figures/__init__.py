"""Figures of the papers' experiments, one module per experiment family (matplotlib,
Agg backend): `jaxode.figures.flows` (NODE-EW Fig. 3), `jaxode.figures.curve`
(NODE-EW Fig. 1), `jaxode.figures.dcn` (DCN Figs. 3-5, Tables 2-3)."""


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
