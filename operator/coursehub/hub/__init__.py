"""The hub side of coursehub: text that the z2jh chart runs inside JupyterHub.

``course_spawner.py`` is one self-contained file. The values renderer embeds it as a
``hub.extraConfig`` entry (z2jh exec's each entry, in key order, in the namespace of
its jupyterhub_config.py, where ``c`` is the config); tests import it as
``coursehub.hub.course_spawner``.
"""

from importlib import resources

__all__ = ["course_spawner_source", "extra_config_snippets", "hub_config_overrides"]

# z2jh runs extraConfig entries in sorted key order; the prefix keeps ours together
# and in this order whatever other keys a hub's raw values add.
DATABASE_SNIPPET_KEY = "coursehub-10-database"
SPAWNER_SNIPPET_KEY = "coursehub-20-course-spawner"

_DATABASE_SNIPPET = """\
# coursehub: the hub database URL comes from the DATABASE_URL env var, which
# hub.extraEnv fills from the database Secret (hub.db.type: postgres leaves db_url unset).
def _coursehub_db_url(url):
    # A driverless postgres URL means psycopg (3) to SQLAlchemy >= 2.1 but psycopg2
    # to older ones; name the driver that is installed so either works.
    import importlib.util
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgres", "postgresql"):
        for module, driver in (("psycopg2", "psycopg2"), ("psycopg", "psycopg")):
            if importlib.util.find_spec(module) is not None:
                return "postgresql+" + driver + "://" + rest
        return "postgresql://" + rest
    return url


import os as _coursehub_os
if _coursehub_os.environ.get("DATABASE_URL"):
    c.JupyterHub.db_url = _coursehub_db_url(_coursehub_os.environ["DATABASE_URL"])
"""


def course_spawner_source() -> str:
    """The text of ``course_spawner.py`` exactly as it ships in the package."""
    return resources.files(__package__).joinpath("course_spawner.py").read_text(encoding="utf-8")


DEFAULT_STAFF_GROUP = "coursehub-staff"


def extra_config_snippets(
    *, allowlist_configmap: str = "coursehub-allowlist", staff_group: str = DEFAULT_STAFF_GROUP
) -> dict[str, str]:
    """The ordered ``hub.extraConfig`` entries (name -> Python source) for a hub.

    The spawner entry is the module text preceded by one settings line that the
    module reads when it configures ``c``. ``staff_group``: the JupyterHub group whose
    members (besides admins) see the staff page ``/hub/courses``; "" for admins only.
    """
    # repr: a Python literal, since the line is Python source
    settings = repr({"allowlist_configmap": str(allowlist_configmap), "staff_group": str(staff_group)})
    spawner = (
        "# coursehub course spawner (generated from coursehub/hub/course_spawner.py)\n"
        f"COURSEHUB_SETTINGS = {settings}\n" + course_spawner_source()
    )
    return {DATABASE_SNIPPET_KEY: _DATABASE_SNIPPET, SPAWNER_SNIPPET_KEY: spawner}


def hub_config_overrides() -> dict:
    """Entries that must go into ``hub.config``.

    Empty: the spawner snippet sets ``JupyterHub.spawner_class`` itself (the class is
    defined in extraConfig, so a dotted path cannot name it) and swaps the tmp
    authenticator for the course-aware one when ``authenticator_class`` is ``tmp``.
    """
    return {}
