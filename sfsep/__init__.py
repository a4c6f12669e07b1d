"""sfsep: music source separation that is robust to the input's sampling frequency.

The flow (see DESIGN.md): read -> resample up to the model's trained rate -> chunked
inference -> resample the stems back down -> write atomically. `sfsep.pipeline` exposes it
to library users; `sfsep.cli` is the command line.
"""

__version__ = "0.1.0"
