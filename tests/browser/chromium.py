"""How the browser tests start Debian's Chromium (no downloaded browser, no network)."""

from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
HAVE_CHROMIUM = Path(CHROMIUM).exists()
