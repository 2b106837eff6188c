"""Command line: ``lowrank-sparse compress | evaluate | report | export | demo``.

Every subcommand has ``--help``; bad arguments exit with code 2 and a one-line reason
on stderr; ``--json`` prints one machine-readable JSON object on stdout instead of the
human-readable text.  Progress bars (tqdm) appear only on a terminal.

Modules: ``args`` (argument types and the parser class), ``output`` (text/JSON output,
the user-error type), ``sources`` (models and data sets by name), ``measure`` (accuracy,
fidelity, sizes, latency), one module per subcommand, and ``app`` (the parser and
:func:`main`).
"""

from __future__ import annotations

from .app import main

__all__ = ["main"]
