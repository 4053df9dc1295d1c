"""WSGI applications that gunicorn loads as top-level modules from this directory.

Each module runs under Debian's python3 in a process of its own and imports
nothing from registry_p2p. The directory contains no module named like a
package that an application imports, such as keystone, because gunicorn's
--chdir puts it first on sys.path.
"""
