// The console's only way to the platform: GET /api/v1/... with the signed-in token.
//
// Errors become ApiError (status 0: the server could not be reached) and describe() turns
// each into words a person can act on.

// /api/v1 relative to the console's own URL (/console/ -> /api/v1/), so a prefix in front of
// the server (a reverse proxy's root path) is kept.
const BASE = new URL("../api/v1/", document.baseURI);

export class ApiError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

export class Api {
  constructor(token) {
    this.token = token;
  }

  /** The JSON body of GET path?params, or an ApiError. */
  async get(path, params) {
    const url = new URL(path.replace(/^\//, ""), BASE);
    for (const [k, v] of Object.entries(params || {})) {
      if (v !== null && v !== undefined) url.searchParams.set(k, String(v));
    }
    let resp;
    try {
      resp = await fetch(url, {
        headers: { Authorization: `Bearer ${this.token}`, Accept: "application/json" },
        cache: "no-store",
        credentials: "omit",
        referrerPolicy: "no-referrer",
      });
    } catch (err) {
      throw new ApiError(0, "network", `cannot reach the server (${err.message})`);
    }
    let body = null;
    try {
      body = await resp.json();
    } catch {
      body = null;
    }
    if (!resp.ok) {
      const e = (body && body.error) || {};
      throw new ApiError(
        resp.status,
        e.code || "http_error",
        e.message || resp.statusText || "no message",
        resp.headers.get("Retry-After"),
      );
    }
    return body;
  }

  /** Every item of a paginated list, following next_cursor (pages of 500, the most). */
  async all(path, params) {
    const items = [];
    let cursor = null;
    for (let page = 0; page < 1000; page++) {
      const body = await this.get(path, { ...params, limit: 500, cursor });
      items.push(...body.items);
      cursor = body.next_cursor;
      if (!cursor) break;
    }
    return items;
  }
}

/** An error in words: what happened and what to do. */
export function describe(err) {
  if (!(err instanceof ApiError)) return `The console failed: ${err && err.message ? err.message : err}`;
  switch (err.status) {
    case 0:
      return "Cannot reach the FastGPU server (is it running?). Retrying.";
    case 401:
      return (
        "This token is not accepted: it is wrong, expired, or was rotated or revoked. " +
        `Sign in with a current token. (${err.message})`
      );
    case 403:
      return `This token may not read this: ${err.message}`;
    case 404:
      return `Not found: ${err.message}`;
    case 429:
      return `Too many requests with this token; retrying${err.retryAfter ? ` in ${err.retryAfter} s` : ""}.`;
    case 503:
      return `The platform cannot answer this now (Ray, its database or a service it needs is down); retrying. ${err.message}`;
    default:
      return `The server answered ${err.status} (${err.code}): ${err.message}`;
  }
}
