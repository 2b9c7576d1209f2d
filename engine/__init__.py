"""copylora's headless engine.

Nothing in this package imports the Textual app (``copylora_tui``), and importing the
package itself is cheap: modules that need torch import it themselves, so the CLI and the
app can use the project/queue code without paying for torch.
"""

__version__ = "0.1.0"
