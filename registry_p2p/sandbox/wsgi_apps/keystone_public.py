"""Keystone's public API, for gunicorn started by registry_p2p.sandbox.keystone.

Keystone reads its configuration files from the environment variables
OS_KEYSTONE_CONFIG_DIR and OS_KEYSTONE_CONFIG_FILES.
"""

import sys

# oslo.config parses sys.argv when Keystone initializes, and rejects
# gunicorn's own arguments.
del sys.argv[1:]

from keystone.server.wsgi import initialize_public_application  # noqa: E402

application = initialize_public_application()
