"""Print the agency node's OpenAPI document (committed as docs/openapi/agency.json).

python -m consumers.agency.openapi > docs/openapi/agency.json
"""

from __future__ import annotations

import json
from typing import Any, cast

from consumers.agency.app import create_app
from consumers.agency.node import AgencyNode


def document() -> dict[str, Any]:
    # Only the document is built: no handler runs, so no node is needed behind it.
    return create_app(cast(AgencyNode, None), "").openapi()


if __name__ == "__main__":
    print(json.dumps(document(), ensure_ascii=False, indent=2))
