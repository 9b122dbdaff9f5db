"""The analysis layer: what tmlab computes from answers and asks servers for.

========================  ===================================================================
``whatif``                what-if sampling of returned alternatives (public as
                          ``tmlab.sampling``), over ``sampler_twin``, the numpy twin of the
                          server's sampler chain; ``frequency``: does a sampler draw from
                          given numbers (exact binomial tests and their power)
``sweeps``, ``summary``   parameter grids into frames, and their summaries
``audits``, ``align``     determinism audits; two answers aligned token by token
``branching``             a branch from any token of an answer
``branch_tree``           the history's branches as an outline (``tmlab.tree``)
``continuations``         the probability tree of continuations (``tmlab.continuations``)
``continuation_check``    the one check: does a server continue a final assistant message?
``probes``                what a server does (``tmlab.probe``, ``tmlab.needs``)
``scoring``               the log-probability of a given text (``tmlab.score``)
``classification``        labels scored as continuations (``tmlab.classify``)
``plots``                 matplotlib plots of the above
========================  ===================================================================

Imports go down only: the client layer and the core, never the Jupyter front ends. Nothing is
imported here: ``import tmlab`` stays light.
"""
