/**
 * The Kubernetes remote command protocol as the exec transport uses it
 * (kubernetes/kubernetes: staging/src/k8s.io/apimachinery/pkg/util/remotecommand
 * and the channel.k8s.io websocket subprotocols of
 * staging/src/k8s.io/apiserver/pkg/util/wsstream): every binary message is one
 * byte of channel, then data.
 */
import { BackupError } from '../../errors';
import { RemoteOutput } from '../remote-process';

/** v5 adds the CLOSE channel, which ends stdin (EOF) without closing the socket (Kubernetes >= 1.30). */
export const V5_PROTOCOL = 'v5.channel.k8s.io';
export const V4_PROTOCOL = 'v4.channel.k8s.io';
export const STDIN = 0;
export const STDOUT = 1;
export const STDERR = 2;
/** A `Status` object (JSON): the exit status, after all output. */
export const STATUS = 3;
/** v5 only: [CLOSE, n] ends stream n (for stdin, EOF for the command). */
export const CLOSE = 255;

/**
 * Runs argv under `sh`, which writes `\n<marker> <exit code>\n` on stdout and on stderr
 * once it has exited: each proves that its stream arrived whole (see KubernetesExecProcess).
 *
 * Without `stdin` the command's input is /dev/null, and the shell then waits for a line (or
 * EOF) on its own stdin before it exits: the client sends it once both markers have
 * arrived. The kubelet closes its connection as soon as the command has exited, and output
 * still queued in that connection then (a slow reader leaves megabytes there) can be lost
 * to a reset while the API server reports Success; held until the client has everything,
 * the command's exit leaves nothing in flight but the status.
 */
export function exitMarkerWrap(marker: string, argv: string[], stdin: boolean): string[] {
  const mark = 'printf \'\\n%s %d\\n\' "$0" "$s"';
  const script = stdin
    ? `"$@"; s=$?; ${mark}; ${mark} >&2; exit "$s"`
    : `"$@" </dev/null; s=$?; ${mark}; ${mark} >&2; read -r ack; exit "$s"`;
  return ['/bin/sh', '-c', script, marker, ...argv];
}

/** The client's word to a command run without stdin that both markers arrived (see exitMarkerWrap). */
export const MARKERS_RECEIVED = Buffer.from([STDIN, 0x0a]);

/**
 * The API server refused the exec (403): Juju's default role lacks `get` on `pods/exec`.
 * The message states the problem; the remedy `{ kind: 'grant-exec', app }` is worded by
 * the front end (the charm: `juju trust <app> --scope=cluster`).
 */
export class KubernetesForbiddenError extends BackupError {
  /** What the API server said, e.g. `pods "synapse-0" is forbidden: User ... cannot get ...`. */
  readonly apiMessage: string;

  constructor(appName: string, apiMessage: string) {
    super('workload', 'the charm may not exec into its pod', {
      remedy: { kind: 'grant-exec', app: appName },
    });
    this.apiMessage = apiMessage;
    this.name = 'KubernetesForbiddenError';
  }
}

/** A Kubernetes `Status` object, as sent on the status channel and in refused handshakes. */
export interface ApiStatus {
  status?: string;
  message?: string;
  reason?: string;
  code?: number;
  details?: { causes?: { reason?: string; type?: string; message?: string }[] };
}

export function parseStatus(text: string): ApiStatus | null {
  try {
    const parsed = JSON.parse(text) as unknown;
    return parsed && typeof parsed === 'object' ? (parsed as ApiStatus) : null;
  } catch {
    return null;
  }
}

/**
 * The command's stdout or stderr. Both arrive on one websocket, so the
 * websocket is paused when either consumer stops reading (`onFull`), and
 * resumed only when neither is saturated (`onRead` decides).
 */
export class ChannelOutput extends RemoteOutput {
  constructor(
    private readonly onFull: () => void,
    private readonly onRead: () => void,
    private readonly onAbandon: () => void,
  ) {
    super();
  }

  protected pauseSource(): void {
    this.onFull();
  }

  protected resumeSource(): void {
    this.onRead();
  }

  protected abandonSource(): void {
    this.onAbandon();
  }
}

/**
 * Stdout or stderr, which ends with the exit marker (exitMarkerWrap): the last
 * `holdBack` bytes received are held back until the status, when the marker
 * is taken off (takeExitMarker) and the rest is pushed.
 */
export class MarkedOutput extends ChannelOutput {
  private tail: Buffer = Buffer.alloc(0);
  private readonly ending: RegExp;

  constructor(
    private readonly marker: string,
    onFull: () => void,
    onRead: () => void,
    onAbandon: () => void,
  ) {
    super(onFull, onRead, onAbandon);
    this.ending = new RegExp(`\n${marker} (\\d{1,3})\n$`);
  }

  /** "\n<marker> <0-255>\n" fits in this many bytes. */
  private get holdBack(): number {
    return this.marker.length + 8;
  }

  override deliver(data: Buffer): boolean {
    if (!this.isOpen || data.length === 0) return true;
    const all = this.tail.length > 0 ? Buffer.concat([this.tail, data]) : data;
    const cut = Math.max(0, all.length - this.holdBack);
    this.tail = Buffer.from(all.subarray(cut));
    const out = all.subarray(0, cut);
    return out.length === 0 ? true : super.deliver(out);
  }

  /** Strips `\n<marker> <code>\n` from the held-back end; returns the code, or null if absent. */
  takeExitMarker(): number | null {
    const match = this.ending.exec(this.tail.toString('latin1'));
    if (!match) return null;
    this.tail = this.tail.subarray(0, match.index);
    return Number(match[1]);
  }

  /** The stream ends with the marker (so far): everything before it has arrived. */
  get markerArrived(): boolean {
    return this.ending.test(this.tail.toString('latin1'));
  }

  /** Pushes what is held back (the marker taken off, if it was there), then ends. */
  override finish(): void {
    if (!this.isOpen) return;
    if (this.tail.length > 0) this.push(this.tail);
    super.finish();
  }
}
