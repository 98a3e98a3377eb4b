/**
 * The workload side of the running-Synapse check (src/backup/running.ts): one
 * sh script that looks for a live Synapse of a data dir three ways, by its pid
 * file, by its command line, and by the database files it holds open.
 */
import { sh } from './common';

/**
 * The lines that print `proc <pid> <m|s>` and then `config <path>` or `cwd <dir>`
 * for the first Synapse process of this data dir, and return 0; else return 1.
 * A Synapse process is one with an argument holding `synapse.app.homeserver`
 * (`python -m`, as Pebble, systemd and the official image run it: `m`) or
 * `synapse_homeserver` (pip's console script, NixOS's wrapper: `s`); it is this
 * data dir's when its working directory is the data dir (`cwd`, as it reads
 * it), or one of its arguments (`--config-path=` stripped, a relative one
 * joined to its working directory; where that cannot be read, as non-root
 * another user's, read under the data dir, and reported relative, since it may
 * be this one) is the config $rc or the data dir $rd,
 * symlinks followed (`config`: that argument, as the process wrote it). An
 * argument under $cr (--config-root: where a container mounts the data dir,
 * /srv/data/homeserver.yaml) is looked up in the process's own root
 * (/proc/PID/root, its mount namespace) and is this dir's only if it is the
 * same file or dir there (`-ef`): another container's /srv/data is not. Where
 * that root cannot be read (not root, another user's process), it is read
 * under $dd instead. One grep over every
 * cmdline finds the candidates; every process when grep cannot (no -a, or too
 * many pids for one command line). Never the names themselves in this text:
 * this sh's argv would match in another check running meanwhile.
 */
const FIND_PROCESS = [
  'find_proc() {',
  "  p1='synapse[.]app[.]homeserver'; p2='synapse[_]homeserver'",
  '  all=y',
  `  if printf 'x\\0synapse.%s\\0' app.homeserver | grep -q -a -s -e "$p1" 2>/dev/null; then`,
  '    if hits=$(cd /proc && grep -l -a -s -e "$p1" -e "$p2" -- [0-9]*/cmdline 2>/dev/null; [ $? -le 2 ]); then all=n; fi',
  '  fi',
  '  if [ $all = y ]; then set -- /proc/[0-9]*',
  "  else set -- $(printf '%s\\n' $hits | sed -n 's,^\\([0-9]*\\)/cmdline$,/proc/\\1,p'); fi",
  '  for d; do',
  '    [ "${d#/proc/}" = "$$" ] && continue',
  '    args=$(tr "\\0" "\\n" < "$d/cmdline" 2>/dev/null) || continue',
  '    case $args in *synapse[.]app[.]homeserver*) w=m ;; *synapse[_]homeserver*) w=s ;; *) continue ;; esac',
  '    cwd=$(readlink "$d/cwd" 2>/dev/null) || cwd=',
  '    if [ -n "$cwd" ] && [ "$cwd" = "$rd" ]; then',
  '      printf "proc %s %s\\ncwd %s\\n" "${d#/proc/}" $w "$cwd"; return 0',
  '    fi',
  '    hit=$(printf "%s\\n" "$args" | while IFS= read -r a; do',
  '      a=${a#--config-path=}',
  '      case $a in',
  '        /*) ;;',
  '        "") continue ;;',
  '        *)',
  '          if [ -z "$cwd" ]; then',
  "            # Its working directory is unreadable (another user's process, as non-root):",
  '            # a relative path that is this config or data dir from here may be it.',
  '            if [ "$rd/$a" -ef "$rc" ] || [ "$rd/$a" -ef "$rd" ]; then printf "%s\\n" "$a"; break; fi',
  '            continue',
  '          fi',
  '          a="$cwd/$a" ;;',
  '      esac',
  '      m=$a',
  '      if [ -n "$cr" ]; then case $a in "$cr"|"$cr"/*)',
  '        if [ -e "$d/root/." ]; then',
  '          if [ "$d/root$a" -ef "$rc" ] || [ "$d/root$a" -ef "$rd" ]; then printf "%s\\n" "$a"; break; fi',
  '          continue',
  '        fi',
  '        m=$dd${a#"$cr"} ;;',
  '      esac; fi',
  '      r=$(readlink -f -- "$m" 2>/dev/null) || continue',
  '      if [ "$r" = "$rc" ] || [ "$r" = "$rd" ]; then printf "%s\\n" "$a"; break; fi',
  '    done)',
  '    if [ -n "$hit" ]; then printf "proc %s %s\\nconfig %s\\n" "${d#/proc/}" $w "$hit"; return 0; fi',
  '  done',
  '  return 1',
  '}',
];

/**
 * Python (python3 - FILE...): finds a process other than itself and its parent
 * that has one of the FILEs (or its -wal, -shm, -journal) open, comparing
 * device and inode: stat of /proc/PID/fd/N follows the link into the file
 * itself, whatever mount namespace or path the process opened it by (a
 * container's bind mount). Prints `open {"pid", "comm", "argv", "path"}` (JSON;
 * `path` the FILE as given when it holds that, else the companion it holds) for the
 * first one, else `none N`
 * (N: processes whose fds it may not read, as non-root another user's).
 */
const OPEN_FILES_PY = [
  'import json, os, stat, sys',
  'want = {}',
  'for p in sys.argv[1:]:',
  '    for s in ("", "-wal", "-shm", "-journal"):',
  '        try:',
  '            st = os.stat(p + s)',
  '        except OSError:',
  '            continue',
  '        if stat.S_ISREG(st.st_mode):',
  '            want.setdefault((st.st_dev, st.st_ino), p + s)',
  'skip = {os.getpid(), os.getppid()}',
  'hidden = 0',
  'def read(pid, name):',
  '    try:',
  '        with open("/proc/%s/%s" % (pid, name), "rb") as f:',
  '            return f.read(4096).decode("utf-8", "replace")',
  '    except OSError:',
  '        return ""',
  'for pid in os.listdir("/proc") if want else []:',
  '    if not pid.isdigit() or int(pid) in skip:',
  '        continue',
  '    try:',
  '        fds = os.listdir("/proc/%s/fd" % pid)',
  '    except PermissionError:',
  '        hidden += 1',
  '        continue',
  '    except OSError:',
  '        continue',
  '    held = []',
  '    for fd in fds:',
  '        try:',
  '            st = os.stat("/proc/%s/fd/%s" % (pid, fd))',
  '        except OSError:',
  '            continue',
  '        path = want.get((st.st_dev, st.st_ino))',
  '        if path is not None:',
  '            held.append(path)',
  '    if held:',
  // The database itself when the process holds it, else the companion it holds.
  '        path = min(held, key=lambda p: (p not in sys.argv[1:], p))',
  '        argv = [a for a in read(pid, "cmdline").split("\\0") if a]',
  '        comm = read(pid, "comm").strip()',
  '        out = {"pid": int(pid), "comm": comm, "argv": argv, "path": path}',
  '        print("open " + json.dumps(out))',
  '        sys.exit(0)',
  'print("none %d" % hidden)',
];

/** What runningCheckCommand prints when python3 is missing and a database is there. */
export const NO_PYTHON_FOR_OPEN_FILES = 'the workload has no python3';

/**
 * Looks for a live Synapse of `dataDir` and prints the first found:
 * - with `byProcess` (the data dir has a homeserver.yaml):
 *   - `pid <pid>`: the pid file `pidFile` (homeserver.yaml's `pid_file`, '' for
 *     none; Synapse writes it when it daemonizes) names a live process;
 *   - `proc <pid> <m|s>` + `config <path>` or `cwd <dir>`: a Synapse process of
 *     `configPath` or `dataDir` (FIND_PROCESS; `configRoot`, '' for none, maps
 *     container paths);
 * - `open {json}`: a process has one of `databases` (absolute paths; the SQLite
 *   files the restore would replace, in the data dir or outside it) or its
 *   companions open (OPEN_FILES_PY, run only when one of them exists; exit 1
 *   with NO_PYTHON_FOR_OPEN_FILES on stderr when the workload has no python3);
 * - `none [N]`: nothing (N: processes whose open files it could not see).
 * The data dir and config are resolved (`pwd -P`, `readlink -f`) before they are
 * compared. Paths reach it as arguments, never as script text.
 */
export function runningCheckCommand(options: {
  pidFile: string;
  configPath: string;
  dataDir: string;
  configRoot: string;
  byProcess: boolean;
  databases: readonly string[];
}): string[] {
  const { pidFile, configPath, dataDir, configRoot, byProcess, databases } = options;
  return sh(
    [
      'pf=$1 rc=$2 dd=$3 cr=$4 look=$5',
      'shift 5',
      'if [ "$look" = y ]; then',
      '  if [ -n "$pf" ] && [ -f "$pf" ]; then',
      '    pid=$(head -c 64 "$pf" | tr -cd 0-9 | head -c 12)',
      '    [ -n "$pid" ] && [ -d "/proc/$pid" ] && { echo "pid $pid"; exit 0; }',
      '  fi',
      '  rd=$(cd -- "$dd" 2>/dev/null && pwd -P) || rd=$dd',
      '  r=$(readlink -f -- "$rc" 2>/dev/null) && [ -n "$r" ] && rc=$r',
      '  while [ "${cr%/}" != "$cr" ]; do cr=${cr%/}; done',
      ...FIND_PROCESS.map((l) => `  ${l}`),
      '  find_proc && exit 0',
      'fi',
      'any=n',
      'for f; do for s in \'\' -wal -shm -journal; do [ -f "$f$s" ] && any=y; done; done',
      '[ $any = y ] || { echo none; exit 0; }',
      'python3 - "$@" <<\'PYTHON\'',
      ...OPEN_FILES_PY,
      'PYTHON',
      'st=$?',
      `[ $st = 127 ] && echo "cannot tell which processes have $1 open: ${NO_PYTHON_FOR_OPEN_FILES}" >&2`,
      'exit $st',
    ],
    pidFile,
    configPath,
    dataDir,
    configRoot,
    byProcess ? 'y' : 'n',
    ...databases,
  );
}
