// The decorator of samples/decorator in TypeScript: it adds behaviour to objects it does not
// own. For each Machine it labels the Machine's infrastructure object with the Machine's name,
// and the Machine with its infrastructure provider's kind, both as `apply` patches: sent with
// this controller's own patch field manager, never forced, so it cannot strip or take fields
// any other controller (the machine controller's status, say) writes.
// Build: ./build.sh (tsc --noEmit, esbuild, wasmop js build).

import type { ReconcileRequest, ReconcileResponse } from "../../../ts/abi";

type Json = Record<string, unknown>;

function object(value: unknown): Json {
  return typeof value === "object" && value !== null && !Array.isArray(value) ? (value as Json) : {};
}

export function reconcile(request: ReconcileRequest): ReconcileResponse {
  const machine = object(request.object);
  const name = String(object(machine.metadata).name);
  const infra = request.related?.infrastructureRef?.object;
  if (infra === undefined || infra === null) {
    return {}; // nothing to decorate until the reference resolves
  }
  const target = object(infra);
  const kind = String(target.kind);
  return {
    apply: [
      {
        apiVersion: target.apiVersion,
        kind,
        metadata: { name: object(target.metadata).name, labels: { "cluster.example.com/machine": name } },
      },
      {
        apiVersion: machine.apiVersion,
        kind: machine.kind,
        metadata: { name, labels: { "infra.example.com/provider": kind.toLowerCase() } },
      },
    ],
  };
}
