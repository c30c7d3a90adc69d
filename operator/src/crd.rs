//! The `WasmController` custom resource (group `wasmop.dev`, version `v1alpha1`): its Rust
//! types, the CRD generated from them and the admission policy installed with it (`wasmop crd`,
//! committed as `crds/wasmcontroller.yaml` with a drift test), and the status conditions the
//! operator reports.
//!
//! Schema rules the API server can check (required fields, ranges, patterns, "exactly one of"
//! as CEL `x-kubernetes-validations`) live here so a bad spec is rejected at `kubectl apply`
//! time; everything else (unknown kinds, missing RBAC, a plugin that fails to load) is
//! reported on `status.conditions` by the manager.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, CustomResourceExt, Resource};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Default `spec.plugin.limits.memoryMiB`.
pub const DEFAULT_MEMORY_MIB: u32 = 64;
/// Default `spec.plugin.limits.timeoutMs`.
pub const DEFAULT_TIMEOUT_MS: u32 = 1000;
/// Default `spec.resyncPeriod`.
pub const DEFAULT_RESYNC: &str = "5m";
/// Default `spec.maxConcurrentReconciles`.
pub const DEFAULT_CONCURRENCY: u16 = 4;

/// A controller whose reconcile logic is an Extism WebAssembly plugin.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq)]
#[kube(
    group = "wasmop.dev",
    version = "v1alpha1",
    kind = "WasmController",
    namespaced,
    shortname = "wc",
    category = "wasmop",
    status = "WasmControllerStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Parent","type":"string","jsonPath":".spec.parent.kind"}"#,
    printcolumn = r#"{"name":"Shard","type":"string","jsonPath":".status.shard.name"}"#,
    printcolumn = r#"{"name":"Plugin","type":"string","jsonPath":".status.plugin.sha256","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct WasmControllerSpec {
    /// The kind this controller reconciles: one plugin call per object of this kind in the
    /// WasmController's namespace. Must be namespaced and have a status subresource if the
    /// plugin returns status.
    pub parent: KindRef,
    /// Kinds the plugin may create. Every returned child must be one of these; children the
    /// controller made that are no longer returned are deleted.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub children: Vec<KindRef>,
    /// Extra objects handed to the plugin: a referenced object (API-contract pattern) or the
    /// objects matching a label selector.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub related: Vec<RelatedSpec>,
    pub plugin: PluginSpec,
    /// Every API read and write for this controller is made as this ServiceAccount of the
    /// WasmController's namespace: the plugin never has more power than the team's account.
    /// Whoever creates the WasmController or changes its spec must be allowed to `impersonate`
    /// this ServiceAccount (the admission policy installed with the CRD checks it).
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: String,
    /// How often every parent is reconciled even when nothing changed, e.g. `30s`, `5m`, `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub resync_period: Option<String>,
    /// Parents reconciled at once (also the most plugin instances it may hold, each reserving
    /// `plugin.limits.memoryMiB` of the operator's plugin memory budget). Default 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub max_concurrent_reconciles: Option<u16>,
}

/// A kind, by `apiVersion` (`group/version`, or `v1` for the core group) and `kind`.
#[derive(
    Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[serde(rename_all = "camelCase")]
pub struct KindRef {
    #[schemars(length(min = 1, max = 253))]
    pub api_version: String,
    #[schemars(length(min = 1, max = 63))]
    pub kind: String,
}

impl KindRef {
    pub fn group(&self) -> &str {
        self.api_version.rsplit_once('/').map_or("", |(g, _)| g)
    }
    pub fn version(&self) -> &str {
        self.api_version
            .rsplit_once('/')
            .map_or(self.api_version.as_str(), |(_, v)| v)
    }
}

impl std::fmt::Display for KindRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.kind, self.api_version)
    }
}

/// One `spec.related` entry. Exactly one of `ref` or `kind`+`selector` is set.
#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RelatedSpec {
    /// The key under `request.related` in the plugin call.
    #[schemars(regex(pattern = r"^[a-zA-Z][a-zA-Z0-9_-]{0,62}$"), length(max = 63))]
    pub name: String,
    /// JSONPath into the parent that yields a reference, e.g. `$.spec.infrastructureRef`:
    /// `{apiVersion, kind, name}`, `{apiGroup, kind, name}` (Cluster API v1beta2) or `{group,
    /// kind, name}` (Gateway API; `""` is the core group), each with an optional `namespace`
    /// that must be the parent's. A path that yields a list (Gateway API `targetRefs`), or
    /// several values, gives the plugin one entry per reference under `targets`. Without a
    /// version, the version comes from `contractVersions`, else the group's preferred one.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub ref_: Option<String>,
    /// With `ref`, required: the kinds a reference may name (a whole group when `kind` is
    /// empty, `""` for the core group). A reference to any other kind is not read: an empty
    /// `allowedKinds` allows no reference at all. List only what the plugin needs: whatever
    /// a plugin can read it can copy into the parent's status.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_kinds: Vec<GroupKind>,
    /// With `ref`, for references without a version (`apiGroup` or `group`): CRD labels that
    /// name the versions implementing a contract, tried in order, as Cluster API providers
    /// label their CRDs (`cluster.x-k8s.io/v1beta2: v1beta1_v1beta2`). The newest served
    /// version the first present label lists is read. A CRD with none of them is an
    /// unresolved reference. Empty: the group's preferred version. The CRD's labels are read
    /// with the operator's account, never the team's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8), inner(length(min = 1, max = 316)))]
    pub contract_versions: Vec<String>,
    /// With `ref`: contract field name -> JSONPath into the referenced object, e.g.
    /// `ready: $.status.ready`. Values are handed to the plugin under `contract`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub contract: BTreeMap<String, String>,
    /// With `ref`: contract fields that may live at several places (a contract that evolved,
    /// e.g. Cluster API's `status.ready` in v1beta1 and `status.initialization.provisioned`
    /// in v1beta2) and must have a JSON type. The plugin gets the value under `contract` and
    /// the path it came from under `matched`; a value of another type is a contract
    /// violation: reported as a Warning Event on the parent and missing for the plugin.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub contract_fields: BTreeMap<String, ContractField>,
    /// With `selector`: the kind to list in the parent's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// A contract field read from one of several places.
#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContractField {
    /// JSONPaths into the referenced object, tried in order: the first one present gives the
    /// value (put the newest contract version first).
    #[schemars(length(min = 1, max = 8))]
    pub paths: Vec<String>,
    /// The JSON type the value must have; any type when absent.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<ContractType>,
}

/// A JSON type a contract field's value must have.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ContractType {
    Boolean,
    String,
    Integer,
    Number,
    Object,
    Array,
}

impl ContractType {
    /// Whether `value` has this type (`integer` is a number without a fraction).
    pub fn matches(self, value: &Value) -> bool {
        match self {
            ContractType::Boolean => value.is_boolean(),
            ContractType::String => value.is_string(),
            ContractType::Integer => value.is_i64() || value.is_u64(),
            ContractType::Number => value.is_number(),
            ContractType::Object => value.is_object(),
            ContractType::Array => value.is_array(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ContractType::Boolean => "boolean",
            ContractType::String => "string",
            ContractType::Integer => "integer",
            ContractType::Number => "number",
            ContractType::Object => "object",
            ContractType::Array => "array",
        }
    }
}

/// A group, or one kind of it.
#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GroupKind {
    pub group: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PluginSpec {
    pub source: PluginSource,
    /// Free-form JSON handed to every call as `controller.config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown")]
    pub config: Option<Value>,
    #[serde(default)]
    pub limits: Limits,
    /// Call the plugin's `finalize` export before a parent is deleted; the controller holds a
    /// finalizer on each parent until `finalize` returns `finalized: true`.
    #[serde(default)]
    pub finalize: bool,
}

/// Where the plugin's bytes come from. Exactly one field is set.
#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct PluginSource {
    /// A key of a ConfigMap in the WasmController's namespace. `binaryData` may hold raw,
    /// gzip- or zstd-compressed wasm (detected by magic bytes). Edits are hot-reloaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapKey>,
    /// A key of a ConfigMap in the WasmController's namespace holding the plugin's
    /// JavaScript source: one ES module (bundle TypeScript and npm imports first) exporting
    /// `reconcile(request)` and optionally `finalize(request)`. The operator pre-initialises
    /// it with its built-in JavaScript runtime into the same plugin `wasmop js build` makes,
    /// cached by the source's digest, so no build step is needed and the 1 MiB ConfigMap limit
    /// applies to the source only. Edits are hot-reloaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub java_script: Option<ConfigMapKey>,
    /// A plugin (raw, gzip or zstd wasm) at an HTTPS URL, verified against `sha256` before
    /// use. The host must be one the operator allows (`--plugin-host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<UrlSource>,
    /// A plugin in an OCI registry, pinned by digest, in the Wasm OCI artifact layout (one
    /// layer of media type `application/wasm`, as `wasmop oci push`, `wkg` or `oras` push it),
    /// optionally signed with cosign. The registry must be one the operator allows
    /// (`--plugin-host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci: Option<OciSource>,
    /// A path on the operator's filesystem. For development only: the operator must be
    /// started with `--allow-file-plugins`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq, Eq, Hash)]
pub struct UrlSource {
    /// `https://host[:port]/path`.
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,
    /// The sha256 of the bytes at `url` (as served, before any decompression), 64 lowercase
    /// hex digits: what was reviewed is what runs.
    #[schemars(regex(pattern = r"^[a-f0-9]{64}$"))]
    pub sha256: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct OciSource {
    /// `registry/repository@sha256:<digest>` (a tag alone is refused: a digest is what was
    /// reviewed). The digest is the manifest's.
    #[schemars(regex(pattern = r"^[^@\s]+@sha256:[a-f0-9]{64}$"), length(max = 1024))]
    pub image: String,
    /// A cosign public key (PEM, ECDSA P-256, as `cosign generate-key-pair` writes it): the
    /// artifact must carry a cosign signature by this key (key-based, checked offline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub public_key: Option<String>,
}

impl PluginSource {
    /// The ConfigMap the plugin comes from (wasm or JavaScript), if it comes from one.
    pub fn config_map_key(&self) -> Option<&ConfigMapKey> {
        self.config_map.as_ref().or(self.java_script.as_ref())
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq, Eq, Hash)]
pub struct ConfigMapKey {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Per-call limits. A plugin that exceeds them is stopped, its instance discarded, and the
/// parent requeued with backoff.
#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Linear memory cap per instance, in MiB. Default 64.
    #[serde(default, rename = "memoryMiB", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4096))]
    pub memory_mib: Option<u32>,
    /// Wall-clock cap per call, in milliseconds. Default 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 60000))]
    pub timeout_ms: Option<u32>,
    /// Optional cap on wasm instructions per call (deterministic, unlike the timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub fuel: Option<u64>,
}

impl Limits {
    pub fn memory_mib(&self) -> u32 {
        self.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB)
    }
    pub fn timeout_ms(&self) -> u32 {
        self.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS)
    }
}

/// What the operator observed; written by the operator only.
#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WasmControllerStatus {
    /// `Ready`: the plugin is loaded and the controller runs. `Degraded`: the last reconcile
    /// of some parent failed (the message names it and the fix).
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<PluginStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// What this controller watches, owns, reads, patches and finalizes: the behavioural
    /// dependencies between controllers, in the API (`wasmop graph` draws them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dependencies: Option<Dependencies>,
    /// With `wasmop run --shard`: the replica this WasmController is assigned to. Written by
    /// the operator only (the status subresource), so an author cannot pick a replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<ShardStatus>,
}

/// Which replica runs a WasmController (`--shard`).
#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ShardStatus {
    /// The shard (replica, and its Lease) the WasmController is assigned to.
    pub name: String,
    /// When that shard took it and started its controller; absent while a handover waits for
    /// the new shard to take it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime>,
}

/// A controller's dependencies on kinds. Kinds are written `Kind.group` (`Kind` for the
/// core group, `*.group` for a whole group).
#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Dependencies {
    /// Kinds it watches: the parent, the children and the related kinds.
    #[serde(default)]
    pub watches: Vec<String>,
    /// Kinds it creates, owns and prunes (the children).
    #[serde(default)]
    pub owns: Vec<String>,
    /// Kinds it reads through `spec.related`, with the contract fields it relies on.
    #[serde(default)]
    pub reads: Vec<ReadDependency>,
    /// Fields it has written to objects it does not own (the parent's status, `apply`
    /// patches), by kind, as observed since the controller started.
    #[serde(default)]
    pub patches: Vec<PatchDependency>,
    /// Kinds on which it holds a finalizer (`plugin.finalize`).
    #[serde(default)]
    pub finalizes: Vec<String>,
}

/// One `spec.related` entry as a dependency.
#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ReadDependency {
    /// The `spec.related` entry's name.
    pub name: String,
    pub kinds: Vec<String>,
    /// The contract fields relied on: `field: path | path [type]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contract: Vec<String>,
}

/// Fields written to one kind, as JSON paths (`.status.ready`, the API server's spelling).
#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PatchDependency {
    pub kind: String,
    pub fields: Vec<String>,
}

/// `Kind.group`, or `Kind` for the core group, or `*.group` for every kind of a group.
pub fn kind_name(group: &str, kind: Option<&str>) -> String {
    match (group, kind) {
        ("", Some(kind)) => kind.into(),
        ("", None) => "*".into(),
        (group, Some(kind)) => format!("{kind}.{group}"),
        (group, None) => format!("*.{group}"),
    }
}

impl KindRef {
    /// [`kind_name`] of this kind.
    pub fn kind_name(&self) -> String {
        kind_name(self.group(), Some(&self.kind))
    }
}

impl WasmControllerSpec {
    /// The dependencies the spec declares; `patches` is filled from what was observed.
    pub fn dependencies(&self) -> Dependencies {
        let parent = self.parent.kind_name();
        let owns: Vec<String> = self.children.iter().map(KindRef::kind_name).collect();
        let reads: Vec<ReadDependency> = self.related.iter().map(RelatedSpec::dependency).collect();
        let mut watches = vec![parent.clone()];
        for kind in owns.iter().chain(reads.iter().flat_map(|r| &r.kinds)) {
            if !watches.contains(kind) {
                watches.push(kind.clone());
            }
        }
        Dependencies {
            watches,
            owns,
            reads,
            patches: Vec::new(),
            finalizes: if self.plugin.finalize {
                vec![parent]
            } else {
                Vec::new()
            },
        }
    }
}

impl RelatedSpec {
    fn dependency(&self) -> ReadDependency {
        let kinds = match (&self.api_version, &self.kind) {
            (Some(api_version), Some(kind)) => {
                let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
                vec![kind_name(group, Some(kind))]
            }
            _ => self
                .allowed_kinds
                .iter()
                .map(|gk| kind_name(&gk.group, gk.kind.as_deref()))
                .collect(),
        };
        let mut contract: Vec<String> = self
            .contract
            .iter()
            .map(|(field, path)| format!("{field}: {path}"))
            .collect();
        contract.extend(self.contract_fields.iter().map(|(field, f)| {
            let typed = f
                .type_
                .map(|t| format!(" [{}]", t.name()))
                .unwrap_or_default();
            format!("{field}: {}{typed}", f.paths.join(" | "))
        }));
        ReadDependency {
            name: self.name.clone(),
            kinds,
            contract,
        }
    }
}

/// The plugin currently running.
#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PluginStatus {
    pub sha256: String,
    pub size_bytes: u64,
    /// Whether the source was compressed (`gzip`, `zstd`) or `none`, or `javascript` (built
    /// from JavaScript source by the operator).
    pub encoding: String,
}

fn preserve_unknown(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    serde_json::from_value(json!({"x-kubernetes-preserve-unknown-fields": true}))
        .expect("static schema")
}

/// The CEL rules the API server enforces beyond the structural schema, by schema path.
/// Each message names the field and the fix.
const CEL_RULES: &[(&[&str], &str, &str)] = &[
    (
        &["spec", "plugin", "source"],
        "[has(self.configMap), has(self.javaScript), has(self.url), has(self.oci), has(self.file)].filter(x, x).size() == 1",
        "spec.plugin.source: set exactly one of configMap, javaScript, url, oci or file",
    ),
    (
        &["spec", "related", "[]"],
        "has(self.ref) != has(self.selector)",
        "spec.related[]: set either ref (API contract) or selector (with apiVersion and kind), not both",
    ),
    (
        &["spec", "related", "[]"],
        "!has(self.selector) || (has(self.apiVersion) && has(self.kind))",
        "spec.related[]: a selector entry needs apiVersion and kind",
    ),
    (
        &["spec", "related", "[]"],
        "has(self.ref) || (!has(self.contract) && !has(self.contractFields) && !has(self.allowedKinds) && !has(self.contractVersions))",
        "spec.related[]: contract, contractFields, contractVersions and allowedKinds only apply to ref entries",
    ),
    (
        &["spec", "related", "[]"],
        "!has(self.ref) || (has(self.allowedKinds) && size(self.allowedKinds) > 0)",
        "spec.related[].allowedKinds: a ref entry must list the kinds its reference may name, e.g. allowedKinds: [{group: example.com, kind: Infra}] (references are denied by default: whatever the plugin can read it can copy into the parent's status)",
    ),
    (
        &["spec", "related", "[]"],
        "!has(self.ref) || self.ref.startsWith('$')",
        "spec.related[].ref: must be a JSONPath starting with '$', e.g. $.spec.infrastructureRef",
    ),
    (
        &["spec", "related"],
        "self.all(a, self.exists_one(b, a.name == b.name))",
        "spec.related: names must be unique",
    ),
    (
        &["spec", "serviceAccountName"],
        "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",
        "spec.serviceAccountName: must be a ServiceAccount name: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit",
    ),
    (
        &["spec", "children"],
        "self.all(a, self.exists_one(b, a.apiVersion == b.apiVersion && a.kind == b.kind))",
        "spec.children: each kind may be listed once",
    ),
];

/// The CRD as installed: kube-derive's output plus the CEL rules above.
pub fn crd() -> CustomResourceDefinition {
    let mut crd = serde_json::to_value(WasmController::crd()).expect("CRD serialises");
    let schema = &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    strip_unknown_formats(schema);
    for (path, rule, message) in CEL_RULES {
        let mut node = &mut *schema;
        for step in *path {
            node = if *step == "[]" {
                &mut node["items"]
            } else {
                &mut node["properties"][step]
            };
        }
        assert!(
            node.is_object(),
            "CEL rule path {path:?} is not in the schema"
        );
        let rules = node
            .as_object_mut()
            .unwrap()
            .entry("x-kubernetes-validations")
            .or_insert_with(|| json!([]));
        rules
            .as_array_mut()
            .unwrap()
            .push(json!({"rule": rule, "message": message}));
    }
    serde_json::from_value(crd).expect("CRD round-trips")
}

/// Removes schemars' Rust-specific formats (`uint16`, `uint32`, ...), which Kubernetes does
/// not know and warns about on every `kubectl apply`; the `minimum: 0` they come with stays.
fn strip_unknown_formats(node: &mut Value) {
    match node {
        Value::Object(map) => {
            if map
                .get("format")
                .and_then(Value::as_str)
                .is_some_and(|f| f.starts_with("uint") || f == "int16" || f == "int8")
            {
                map.remove("format");
            }
            map.values_mut().for_each(strip_unknown_formats);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_unknown_formats),
        _ => {}
    }
}

/// Name of the admission policy and its binding installed with the CRD.
pub const ACT_AS_POLICY: &str = "wasmop.dev-act-as-serviceaccount";

/// Acting as a ServiceAccount needs the right to: the API server refuses to create a
/// WasmController, or change its spec, unless its author may `impersonate` the ServiceAccount
/// it names (a team account writing one through its plugin included). Without this, anyone who
/// may write WasmControllers in a namespace could borrow the power of any account in it.
///
/// Metadata-only writes (the operator's finalizers, the garbage collector's ownerReferences)
/// and status writes are never checked, so they cannot be blocked.
pub fn act_as_policy() -> ValidatingAdmissionPolicy {
    // CEL: who is refused, which account, and the Role rule that would allow it.
    let message_expression = "'spec.serviceAccountName: ' + request.userInfo.username \
        + ' may not act as ServiceAccount ' + request.namespace + '/' + object.spec.serviceAccountName \
        + ': a WasmController makes every read and write as its ServiceAccount, so whoever writes its spec must be allowed to impersonate that account. Grant it with a Role in namespace ' + request.namespace \
        + ' with the rule {apiGroups: [\"\"], resources: [serviceaccounts], resourceNames: [' + object.spec.serviceAccountName + '], verbs: [impersonate]}' \
        + ' bound to ' + request.userInfo.username + ', or name a ServiceAccount you may impersonate'";
    serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": ACT_AS_POLICY},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": [WasmController::group(&())],
                "apiVersions": ["*"],
                "operations": ["CREATE", "UPDATE"],
                "resources": [WasmController::plural(&())], // not the status subresource
            }]},
            "matchConditions": [{
                "name": "spec-written",
                "expression": "request.operation == 'CREATE' || object.spec != oldObject.spec",
            }],
            "validations": [{
                "expression": "authorizer.group('').resource('serviceaccounts').namespace(request.namespace).name(object.spec.serviceAccountName).check('impersonate').allowed()",
                "message": "spec.serviceAccountName: you may not act as this ServiceAccount: whoever writes a WasmController's spec needs the impersonate verb on its ServiceAccount (a Role rule {apiGroups: [\"\"], resources: [serviceaccounts], resourceNames: [NAME], verbs: [impersonate]}), or must name one they may impersonate",
                "messageExpression": message_expression,
                "reason": "Forbidden",
            }],
        }
    }))
    .expect("static policy")
}

/// Enforces [`act_as_policy`] everywhere.
pub fn act_as_policy_binding() -> ValidatingAdmissionPolicyBinding {
    serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": ACT_AS_POLICY},
        "spec": {"policyName": ACT_AS_POLICY, "validationActions": ["Deny"]},
    }))
    .expect("static binding")
}

/// Everything `crds/wasmcontroller.yaml` installs, as printed by `wasmop crd`: the CRD, the
/// [`act_as_policy`] and its binding, as one multi-document YAML.
pub fn install_yaml() -> String {
    let docs = [
        serde_yaml::to_string(&crd()),
        serde_yaml::to_string(&act_as_policy()),
        serde_yaml::to_string(&act_as_policy_binding()),
    ]
    .map(|doc| doc.expect("manifests serialise"));
    format!(
        "# Generated by `wasmop crd` from operator/src/crd.rs; do not edit.\n\
         # The WasmController CRD, and the admission policy (with its binding) that lets only\n\
         # those who may impersonate a ServiceAccount name it in spec.serviceAccountName.\n{}",
        docs.join("---\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_crd_matches_the_rust_types() {
        let committed = include_str!("../../crds/wasmcontroller.yaml");
        assert!(
            committed == install_yaml(),
            "crds/wasmcontroller.yaml is stale: run `make crds` (cargo run -p wasmop -- crd > crds/wasmcontroller.yaml)"
        );
    }

    #[test]
    fn the_install_yaml_is_the_crd_then_the_policy_then_its_binding() {
        let kinds: Vec<String> = serde_yaml::Deserializer::from_str(&install_yaml())
            .map(|doc| {
                let doc = Value::deserialize(doc).expect("each document parses");
                format!(
                    "{} {}",
                    doc["kind"].as_str().unwrap(),
                    doc["metadata"]["name"]
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "CustomResourceDefinition \"wasmcontrollers.wasmop.dev\"",
                "ValidatingAdmissionPolicy \"wasmop.dev-act-as-serviceaccount\"",
                "ValidatingAdmissionPolicyBinding \"wasmop.dev-act-as-serviceaccount\"",
            ]
        );
    }

    /// The policy is written as JSON and read into the k8s-openapi types, which drop unknown
    /// fields: check every field survived.
    #[test]
    fn the_act_as_policy_checks_impersonate_on_spec_writes_only() {
        let policy = serde_json::to_value(act_as_policy()).unwrap();
        let spec = &policy["spec"];
        assert_eq!(spec["failurePolicy"], "Fail");
        assert_eq!(
            spec["matchConstraints"]["resourceRules"],
            json!([{"apiGroups": ["wasmop.dev"], "apiVersions": ["*"],
                    "operations": ["CREATE", "UPDATE"], "resources": ["wasmcontrollers"]}])
        );
        assert_eq!(
            spec["matchConditions"][0]["expression"],
            "request.operation == 'CREATE' || object.spec != oldObject.spec"
        );
        let validation = &spec["validations"][0];
        assert!(
            validation["expression"]
                .as_str()
                .unwrap()
                .ends_with(".name(object.spec.serviceAccountName).check('impersonate').allowed()")
        );
        for key in ["message", "messageExpression"] {
            assert!(
                validation[key]
                    .as_str()
                    .unwrap()
                    .contains("verbs: [impersonate]"),
                "{key} names the fix"
            );
        }
        assert_eq!(validation["reason"], "Forbidden");
        let binding = serde_json::to_value(act_as_policy_binding()).unwrap();
        assert_eq!(binding["spec"]["policyName"], policy["metadata"]["name"]);
        assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
    }

    #[test]
    fn every_cel_rule_lands_in_the_schema() {
        let json = serde_json::to_string(&crd()).unwrap();
        for (_, rule, message) in CEL_RULES {
            let rule = serde_json::to_string(rule).unwrap();
            assert!(json.contains(&rule), "missing rule: {message}");
        }
    }

    #[test]
    fn kind_ref_splits_core_and_grouped_api_versions() {
        let core = KindRef {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
        };
        let apps = KindRef {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
        };
        assert_eq!((core.group(), core.version()), ("", "v1"));
        assert_eq!((apps.group(), apps.version()), ("apps", "v1"));
    }
}
