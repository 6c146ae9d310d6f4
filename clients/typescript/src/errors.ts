/**
 * Errors of the mcp-router client.
 *
 * ```text
 * Error
 * └── RouterError        a failed RPC: gRPC code + google.rpc details
 * ```
 *
 * The server answers every error with a gRPC status whose details carry a
 * `google.rpc.ErrorInfo` (domain `mcprouter.v1`, a stable UPPER_SNAKE
 * `reason`, values in `metadata`) and, for bad input, a
 * `google.rpc.BadRequest`. Connect parses `grpc-status-details-bin` into raw
 * details; the two messages are decoded here with the wire reader, so no
 * googleapis code has to be generated or vendored.
 *
 * @module
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { BinaryReader } from "@bufbuild/protobuf/wire";

export { Code };

/** One `google.rpc.BadRequest.FieldViolation`. */
export interface FieldViolation {
  /** Path of the bad field, e.g. `track_events.events[3].value`. */
  readonly field: string;
  /** Why the value is bad. */
  readonly description: string;
  /** The kind of problem, e.g. `INVALID_ID`, `HOUR_NOT_TRUNCATED`; empty when absent. */
  readonly reason: string;
}

/** The header that names a call in the server's log; echoed in the trailers. */
export const REQUEST_ID_HEADER = "x-request-id";

/** A failed RPC, with the server's `google.rpc` details decoded. */
export class RouterError extends Error {
  /** The gRPC status code (Connect's `Code` enum has the gRPC numbers). */
  readonly code: Code;
  /** `ErrorInfo.reason`, e.g. `EXPERIMENT_NOT_FOUND`; empty when absent. */
  readonly reason: string;
  /** `ErrorInfo.domain` (`mcprouter.v1` from this server); empty when absent. */
  readonly domain: string;
  /** `ErrorInfo.metadata`. */
  readonly metadata: Readonly<Record<string, string>>;
  /** `BadRequest.field_violations`, for INVALID_ARGUMENT. */
  readonly fieldViolations: readonly FieldViolation[];
  /** The call's `x-request-id` (the server's echo, else the one sent): find the call in the server log. */
  readonly requestId: string;

  constructor(cause: ConnectError, requestId = "") {
    super(cause.rawMessage, { cause });
    this.name = "RouterError";
    this.code = cause.code;
    this.requestId = cause.metadata.get(REQUEST_ID_HEADER) ?? requestId;
    let reason = "";
    let domain = "";
    let metadata: Record<string, string> = {};
    const fieldViolations: FieldViolation[] = [];
    for (const detail of cause.details) {
      // Incoming details are `{ type, value: Uint8Array }`; outgoing ones are
      // `{ desc, value }` and never seen on an error received from the server.
      if (!("type" in detail) || !(detail.value instanceof Uint8Array)) continue;
      const type = detail.type.replace(/^.*\//, "");
      try {
        if (type === "google.rpc.ErrorInfo") {
          ({ reason, domain, metadata } = decodeErrorInfo(detail.value));
        } else if (type === "google.rpc.BadRequest") {
          fieldViolations.push(...decodeBadRequest(detail.value));
        }
      } catch {
        // A detail we cannot decode is left out; the code and message remain.
      }
    }
    this.reason = reason;
    this.domain = domain;
    this.metadata = metadata;
    this.fieldViolations = fieldViolations;
    // `NOT_FOUND (EXPERIMENT_NOT_FOUND): ... [request_id=...]`, as the Python
    // client prints it; a reason that only repeats the code is left out.
    const shown = reason && reason !== this.statusName ? ` (${reason})` : "";
    const id = this.requestId ? ` [request_id=${this.requestId}]` : "";
    this.message = `${this.statusName}${shown}: ${cause.rawMessage}${id}`;
  }

  /** The name of the gRPC code in Connect's spelling, e.g. `NotFound`. */
  get codeName(): string {
    return Code[this.code] ?? String(this.code);
  }

  /** The canonical gRPC status name, e.g. `NOT_FOUND` (as Python and Go spell it). */
  get statusName(): string {
    if (this.code === Code.Canceled) return "CANCELLED"; // gRPC's spelling
    return this.codeName.replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
  }
}

/** `err` as a `RouterError` when it is a failed RPC, otherwise unchanged. */
export function translateError(err: unknown, requestId = ""): unknown {
  if (err instanceof RouterError) return err;
  if (err instanceof ConnectError) return new RouterError(err, requestId);
  return err;
}

/** Walks the fields of an encoded message; `onField` returns false to skip one. */
function readStrings(bytes: Uint8Array, onField: (field: number, reader: BinaryReader) => boolean): void {
  const reader = new BinaryReader(bytes);
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (!onField(field, reader)) reader.skip(wireType);
  }
}

/** Decodes `google.rpc.ErrorInfo { reason = 1; domain = 2; map<string,string> metadata = 3; }`. */
function decodeErrorInfo(bytes: Uint8Array): { reason: string; domain: string; metadata: Record<string, string> } {
  let reason = "";
  let domain = "";
  const metadata: Record<string, string> = {};
  readStrings(bytes, (field, reader) => {
    if (field === 1) reason = reader.string();
    else if (field === 2) domain = reader.string();
    else if (field === 3) {
      let key = "";
      let value = "";
      readStrings(reader.bytes(), (entryField, entry) => {
        if (entryField === 1) key = entry.string();
        else if (entryField === 2) value = entry.string();
        else return false;
        return true;
      });
      metadata[key] = value;
    } else return false;
    return true;
  });
  return { reason, domain, metadata };
}

/** Decodes `google.rpc.BadRequest { repeated FieldViolation field_violations = 1; }` (field, description, reason). */
function decodeBadRequest(bytes: Uint8Array): FieldViolation[] {
  const violations: FieldViolation[] = [];
  readStrings(bytes, (field, reader) => {
    if (field !== 1) return false;
    let path = "";
    let description = "";
    let reason = "";
    readStrings(reader.bytes(), (violationField, violation) => {
      if (violationField === 1) path = violation.string();
      else if (violationField === 2) description = violation.string();
      else if (violationField === 3) reason = violation.string();
      else return false;
      return true;
    });
    violations.push({ field: path, description, reason });
    return true;
  });
  return violations;
}
