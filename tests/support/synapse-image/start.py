"""Stands in for the Synapse image's /start.py on the test host, with the same contract.

The charm (src/charm/synapse.ts) runs the image's `/start.py generate` once and
`/start.py` as its Pebble service; tests point SYNAPSE_CHARM_GENERATE_COMMAND and
SYNAPSE_CHARM_SERVICE_COMMAND at this file, run with the Synapse venv's python
(scripts/peers/install.sh, `synapse`). The contract, after element-hq/synapse
docker/start.py (v1.163):

  generate   needs SYNAPSE_SERVER_NAME and SYNAPSE_REPORT_STATS; reads SYNAPSE_CONFIG_DIR
             (default /data), SYNAPSE_CONFIG_PATH (default <config dir>/homeserver.yaml),
             SYNAPSE_DATA_DIR (default /data). Writes <config dir>/<server name>.log.config
             (console logging) unless present, chowns the data dir to the target user, then
             runs `synapse.app.homeserver --generate-config --open-private-ports` as that user:
             homeserver.yaml, the signing key, all with absolute paths.
  run        (the default) execs `synapse.app.homeserver --config-path <config path>` as the
             target user; exits 2 when the config file is missing.

The target user is UID/GID from the environment, else 991:991 when started as root (the
official image's `synapse` user), else the current user. Exit status 2 on a usage error.
"""

import os
import subprocess
import sys

LOG_CONFIG = """version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s'
handlers:
  console:
    class: logging.StreamHandler
    formatter: precise
loggers:
  synapse.storage.SQL:
    level: INFO
root:
  level: INFO
  handlers: [console]
disable_existing_loggers: false
"""


def fail(message):
    print(message, file=sys.stderr, flush=True)
    sys.exit(2)


def target_user(environ):
    if "UID" in environ:
        return int(environ["UID"]), int(environ.get("GID", "991"))
    if os.getuid() == 0:
        return 991, 991
    return None


def become(user):
    """Drops to `user` (uid, gid) in this process, as gosu does."""
    if user is None:
        return
    uid, gid = user
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


def paths(environ):
    config_dir = environ.get("SYNAPSE_CONFIG_DIR", "/data")
    config_path = environ.get("SYNAPSE_CONFIG_PATH", config_dir + "/homeserver.yaml")
    data_dir = environ.get("SYNAPSE_DATA_DIR", "/data")
    return config_dir, config_path, data_dir


def generate(environ, user):
    for name in ("SYNAPSE_SERVER_NAME", "SYNAPSE_REPORT_STATS"):
        if name not in environ:
            fail("Environment variable '%s' is mandatory in `generate` mode." % name)
    server_name = environ["SYNAPSE_SERVER_NAME"]
    config_dir, config_path, data_dir = paths(environ)
    os.makedirs(config_dir, exist_ok=True)
    log_config = "%s/%s.log.config" % (config_dir, server_name)
    if not os.path.exists(log_config):
        with open(log_config, "w") as handle:
            handle.write(LOG_CONFIG)
    if user is not None:
        for path in (data_dir, config_dir, log_config):
            os.chown(path, user[0], user[1])
    args = [
        sys.executable, "-m", "synapse.app.homeserver",
        "--server-name", server_name,
        "--report-stats", environ["SYNAPSE_REPORT_STATS"],
        "--config-path", config_path,
        "--config-directory", config_dir,
        "--data-directory", data_dir,
        "--generate-config",
        "--open-private-ports",
    ]
    result = subprocess.run(args, preexec_fn=lambda: become(user), cwd=data_dir)
    sys.exit(result.returncode)


def run(environ, user, extra):
    _config_dir, config_path, _data_dir = paths(environ)
    if not os.path.exists(config_path):
        fail("Config file '%s' does not exist: run `start.py generate` first." % config_path)
    args = [sys.executable, "-m", "synapse.app.homeserver", "--config-path", config_path] + extra
    print("Starting synapse with args " + " ".join(args), flush=True)
    become(user)
    os.execve(sys.executable, args, environ)


def main(argv, environ):
    mode = argv[1] if len(argv) > 1 else "run"
    user = target_user(environ)
    if mode == "generate":
        generate(environ, user)
    elif mode == "run":
        run(environ, user, argv[2:])
    else:
        fail("Unknown execution mode '%s'" % mode)


if __name__ == "__main__":
    main(sys.argv, dict(os.environ))
