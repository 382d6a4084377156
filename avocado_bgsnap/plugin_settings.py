"""The suite's avocado Settings plugin (entry point ``bgsnap-settings``).

Adds ``BGSNAP_HOME/avocado.conf`` (written by ``avocado bgsnap setup``) to
avocado's config files, after the system ones and before the user's
``~/.config/avocado/avocado.conf``.  This is what keeps the suite's data and
results in ``BGSNAP_HOME`` whether or not the venv is activated.

Own module: avocado loads Settings plugins while ``avocado.core.settings``
is still being imported, so this file must not import it (plugin.py does).
"""

from avocado.core.plugin_interfaces import Settings

from . import paths, vt_compat

# before avocado-vt's plugins import virttest.virsh (vt_compat workaround 9)
vt_compat.quiet_startup()


class BgsnapSettings(Settings):
    def adjust_settings_paths(self, paths_list):
        conf = paths.bgsnap_home() / "avocado.conf"
        if conf.is_file():
            paths_list.append(str(conf))
