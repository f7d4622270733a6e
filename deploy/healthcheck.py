"""Container health check: exit 0 if the service answers GET /health/live with 200.

Used by the Dockerfile's HEALTHCHECK (the images have Python but no curl). The port comes from
FOCUS_PORT, as for the service itself.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

LIVE_PATH = "/health/live"


def main() -> int:
    port = os.environ.get("FOCUS_PORT", "8000")
    url = f"http://127.0.0.1:{port}{LIVE_PATH}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as error:
        sys.stderr.write(f"health check {url} failed: {error}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
