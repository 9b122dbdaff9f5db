"""What imports IPython / ipywidgets: the magics, the Explorer, the streaming display.

Nothing outside this subpackage imports IPython; ``%load_ext tmlab`` imports
:mod:`tmlab.jupyter.magics` lazily.
"""
