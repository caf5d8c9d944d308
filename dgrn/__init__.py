"""dgrn: diffusion-guided renormalization of neural systems.

Layers follow the pipeline: ``dgrn.sim`` / ``dgrn.data`` -> ``dgrn.graph`` -> ``dgrn.renorm`` -> ``dgrn.tn`` ->
``dgrn.nn`` -> ``dgrn.models`` (Lightning), with ``dgrn.zoo`` and the CLIs on top. Submodules are imported on
demand, so ``import dgrn`` is cheap.
"""
__version__ = "0.1.0"
