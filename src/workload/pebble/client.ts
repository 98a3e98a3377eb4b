import http from 'node:http';
import { BackupError, errorMessage } from '../../errors';

/** One task of a Pebble change, as `GET /v1/changes/<id>` reports it. */
export interface PebbleTask {
  id: string;
  kind: string;
  summary: string;
  status: string;
  log?: string[];
  data?: Record<string, unknown>;
}

/** A Pebble change (the record of an asynchronous operation). */
export interface PebbleChange {
  id: string;
  kind: string;
  summary: string;
  status: string;
  ready: boolean;
  /** Set when the change failed. */
  err?: string;
  tasks?: PebbleTask[];
}

/** The envelope every Pebble API response is wrapped in. */
interface PebbleResponse {
  type: 'sync' | 'async' | 'error';
  'status-code': number;
  change?: string;
  result?: unknown;
}

export interface RequestOptions {
  /** What the caller is doing, for error messages: "cannot stop services synapse". */
  what: string;
  body?: unknown;
  signal?: AbortSignal;
}

/** Pebble answered, with an error: it is reachable, and said no (a missing executable, a bad request). */
export class PebbleRefusedError extends BackupError {
  constructor(
    message: string,
    readonly statusCode: number,
    /** The refused request, e.g. `POST /v1/exec`. */
    readonly request: string,
  ) {
    super('workload', message);
    this.name = 'PebbleRefusedError';
  }
}

/**
 * A minimal client for Pebble's HTTP API over its unix socket. One connection
 * per request (no shared agent), so instances share no state.
 */
export class PebbleClient {
  constructor(readonly socketPath: string) {}

  /** A request answered synchronously; resolves with the response's `result`. */
  async sync<T>(method: string, path: string, options: RequestOptions): Promise<T> {
    const response = await this.request(method, path, options);
    return response.result as T;
  }

  /** A request that starts a change; resolves with the change id and the `result`. */
  async async<T>(
    method: string,
    path: string,
    options: RequestOptions,
  ): Promise<{ changeId: string; result: T }> {
    const response = await this.request(method, path, options);
    if (response.type !== 'async' || !response.change) {
      throw new BackupError(
        'workload',
        `${options.what}: Pebble answered ${method} ${path} without a change id`,
      );
    }
    return { changeId: response.change, result: response.result as T };
  }

  /** Waits (without a time limit) until the change is ready, and returns it. */
  waitChange(changeId: string, what: string, signal?: AbortSignal): Promise<PebbleChange> {
    return this.sync<PebbleChange>('GET', `/v1/changes/${encodeURIComponent(changeId)}/wait`, {
      what,
      signal,
    });
  }

  /** Waits for the change and rejects, quoting Pebble, if it failed. */
  async waitChangeSucceeded(changeId: string, what: string): Promise<PebbleChange> {
    const change = await this.waitChange(changeId, what);
    if (change.err) throw new BackupError('workload', `${what}: Pebble reports: ${change.err}`);
    return change;
  }

  /** Describes a transport failure talking to this Pebble. */
  connectionError(what: string, err: unknown): BackupError {
    const code = (err as NodeJS.ErrnoException | undefined)?.code;
    if (code === 'ENOENT' || code === 'ECONNREFUSED') {
      return new BackupError(
        'workload',
        `cannot reach Pebble at ${this.socketPath}: ${errorMessage(err)}; is the workload container running?`,
        { cause: err },
      );
    }
    return new BackupError(
      'workload',
      `${what}: lost the connection to Pebble at ${this.socketPath} (${errorMessage(err)})`,
      { cause: err },
    );
  }

  private request(method: string, path: string, options: RequestOptions): Promise<PebbleResponse> {
    const body = options.body === undefined ? undefined : Buffer.from(JSON.stringify(options.body));
    return new Promise<PebbleResponse>((resolve, reject) => {
      const req = http.request(
        {
          socketPath: this.socketPath,
          agent: false,
          method,
          path,
          signal: options.signal,
          headers: body
            ? { 'Content-Type': 'application/json', 'Content-Length': body.length }
            : undefined,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (chunk: Buffer) => chunks.push(chunk));
          res.once('error', (err) => reject(this.connectionError(options.what, err)));
          res.once('end', () => {
            try {
              resolve(this.parse(method, path, options.what, Buffer.concat(chunks).toString()));
            } catch (err) {
              reject(err);
            }
          });
        },
      );
      req.once('error', (err) => reject(this.connectionError(options.what, err)));
      req.end(body);
    });
  }

  private parse(method: string, path: string, what: string, text: string): PebbleResponse {
    let response: PebbleResponse;
    try {
      response = JSON.parse(text) as PebbleResponse;
    } catch {
      throw new BackupError(
        'workload',
        `${what}: Pebble answered ${method} ${path} with something that is not JSON: ${text.slice(0, 200)}`,
      );
    }
    if (response.type === 'error') {
      const message = (response.result as { message?: string } | undefined)?.message;
      throw new PebbleRefusedError(
        `${what}: Pebble refused ${method} ${path} (${response['status-code']}): ${message ?? text.slice(0, 200)}`,
        response['status-code'],
        `${method} ${path}`,
      );
    }
    return response;
  }
}
