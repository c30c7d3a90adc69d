// The Website example plugin in TypeScript: a `Website` parent produces a ConfigMap (its page)
// and a Deployment (nginx serving it) and reports what it made in status.
// Behaviour, shared byte for byte with website-rust and website-go: ../../WEBSITE.md.
//
// The wasmop JavaScript runtime calls the exported `reconcile(request)` / `finalize(request)`
// with the request already parsed and sends back JSON.stringify of what they return; a thrown
// Error fails the call with its message. Integers too large for a JS number (beyond 2^53)
// arrive as BigInt, and a BigInt in the response is written as a JSON integer.
// Build: ../build.sh (npm ci, tsc --noEmit, esbuild, wasmop-js-build).

import type { Event, ReconcileRequest, ReconcileResponse } from "../../../ts/abi";

const DEFAULT_IMAGE = "nginx:1.27";

/** A JSON integer as the runtime hands it over. */
type Int = number | bigint;

/** Reads `value[key]`, or undefined when `value` is not a JSON object. */
function field(value: unknown, key: string): unknown {
  return typeof value === "object" && value !== null && !Array.isArray(value)
    ? (value as Record<string, unknown>)[key]
    : undefined;
}

// Integers are read as the Rust example reads them (serde_json's as_u64 / as_i64), so the
// three languages agree on every input: `1.5`, `-1` or `"2"` is not a count.
const U64_MAX = 2n ** 64n - 1n;
const I64_MIN = -(2n ** 63n);
const I64_MAX = 2n ** 63n - 1n;

function asU64(value: unknown): Int | undefined {
  if (typeof value === "number") return Number.isSafeInteger(value) && value >= 0 ? value : undefined;
  if (typeof value === "bigint") return value >= 0n && value <= U64_MAX ? value : undefined;
  return undefined;
}

function asI64(value: unknown): Int | undefined {
  if (typeof value === "number") return Number.isSafeInteger(value) ? value : undefined;
  if (typeof value === "bigint") return value >= I64_MIN && value <= I64_MAX ? value : undefined;
  return undefined;
}

/**
 * website-rust builds children and status as serde_json values, which print their keys in
 * sorted order; sorting ours makes the responses of the two plugins identical byte for byte.
 * (The API server does not care about key order.)
 */
function sortKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (typeof value !== "object" || value === null) return value;
  const sorted: Record<string, unknown> = {};
  for (const key of Object.keys(value).sort()) {
    sorted[key] = sortKeys((value as Record<string, unknown>)[key]);
  }
  return sorted;
}

export function reconcile(request: ReconcileRequest): ReconcileResponse {
  const metadata = field(request.object, "metadata");
  const spec = field(request.object, "spec");

  const nameField = field(metadata, "name");
  const name = typeof nameField === "string" ? nameField : "";
  const imageField = field(spec, "image");
  const image = typeof imageField === "string" ? imageField : DEFAULT_IMAGE;
  const contentField = field(spec, "content");
  const content = typeof contentField === "string" && contentField !== "" ? contentField : undefined;

  const specReplicas = field(spec, "replicas");
  let replicas: Int;
  if (specReplicas === undefined || specReplicas === null) {
    replicas = asU64(field(request.controller.config, "replicas")) ?? 1;
  } else {
    const parsed = asU64(specReplicas);
    if (parsed === undefined) throw new Error("spec.replicas must be a non-negative integer");
    replicas = parsed;
  }

  const labels = { "app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "wasmop" };
  const selector = { "app.kubernetes.io/name": name };
  const configMapName = `${name}-content`;

  const children: Record<string, unknown>[] = [];
  const container: Record<string, unknown> = { name: "web", image, ports: [{ containerPort: 80 }] };
  const podSpec: Record<string, unknown> = { containers: [container] };
  if (content !== undefined) {
    children.push({
      apiVersion: "v1",
      kind: "ConfigMap",
      metadata: { name: configMapName, labels },
      data: { "index.html": content },
    });
    container.volumeMounts = [{ name: "content", mountPath: "/usr/share/nginx/html" }];
    podSpec.volumes = [{ name: "content", configMap: { name: configMapName } }];
  }
  children.push({
    apiVersion: "apps/v1",
    kind: "Deployment",
    metadata: { name, labels },
    spec: {
      replicas,
      selector: { matchLabels: selector },
      template: { metadata: { labels: selector }, spec: podSpec },
    },
  });

  // The current child, wrapped so that "present but null" differs from "absent".
  const existing = (apiVersion: string, kind: string, childName: string): { value: unknown } | undefined => {
    const byName = request.children?.[`${kind}.${apiVersion}`];
    return byName !== undefined && Object.prototype.hasOwnProperty.call(byName, childName)
      ? { value: byName[childName] }
      : undefined;
  };
  const deployment = existing("apps/v1", "Deployment", name)?.value;
  const available = asU64(field(field(deployment, "status"), "availableReplicas")) ?? 0;

  const made: string[] = [];
  const events: Event[] = [];
  for (const child of children) {
    const { apiVersion, kind } = child as { apiVersion: string; kind: string };
    const childName = field(child.metadata, "name") as string;
    made.push(`${kind}/${childName}`);
    if (existing(apiVersion, kind, childName) === undefined) {
      events.push({ type: "Normal", reason: "Created", message: `created ${kind}/${childName}` });
    }
  }

  const response: ReconcileResponse = {
    children: sortKeys(children) as unknown[],
    status: sortKeys({
      phase: available >= replicas ? "Ready" : "Progressing",
      observedGeneration: asI64(field(metadata, "generation")) ?? 0,
      replicas,
      availableReplicas: available,
      children: made,
    }),
  };
  // Like website-rust, which leaves out an empty `events` list.
  if (events.length > 0) response.events = events;
  return response;
}

export function finalize(_request: ReconcileRequest): ReconcileResponse {
  // `children: []` as website-rust writes it (an empty desired set: nothing is created).
  return { children: [], finalized: true };
}
