//! End to end on real third-party CRDs (issue 24): Cluster API v1.11.3's Machine (v1beta2) and
//! Gateway API v1.6.3's HTTPRoute, exactly as their modules ship them (pinned in
//! hack/versions.env, fetched by hack/crds.sh), with `resyncPeriod: 1h` so only watches can
//! explain how soon a change arrives. The patterns plugin's `machine` and `policy` modes.

use anyhow::{Result, anyhow};
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use wasmop_e2e::website::{WAIT, condition, namespace_with, put_plugin, wasmcontroller_resource};
use wasmop_e2e::{Operator, eventually, install_real_crds, kubectl_stdin, operator, plugin};

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: format!("{group}/{version}"),
        kind: kind.into(),
        plural: plural.into(),
    }
}

fn machines() -> ApiResource {
    resource("cluster.x-k8s.io", "v1beta2", "Machine", "machines")
}

fn routes() -> ApiResource {
    resource("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes")
}

fn policies() -> ApiResource {
    resource(
        "policy.example.com",
        "v1alpha1",
        "RoutePolicy",
        "routepolicies",
    )
}

/// Two infrastructure providers' CRDs. `LabMachine` serves v1alpha1 and v1beta1 (the preferred
/// one) but labels only v1alpha1 as implementing the v1beta2 contract
/// (`status.initialization.provisioned`), so the label, not discovery, must choose the
/// version; `OldMachine` implements the v1beta1 contract (`status.ready`).
const INFRA_CRDS: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: labmachines.infrastructure.example.com
  labels: { cluster.x-k8s.io/v1beta2: v1alpha1 }
spec:
  group: infrastructure.example.com
  scope: Namespaced
  names: { kind: LabMachine, plural: labmachines, singular: labmachine }
  versions:
    - name: v1alpha1
      served: true
      storage: false
      subresources: { status: {} }
      schema: { openAPIV3Schema: { type: object, x-kubernetes-preserve-unknown-fields: true } }
    - name: v1beta1
      served: true
      storage: true
      subresources: { status: {} }
      schema: { openAPIV3Schema: { type: object, x-kubernetes-preserve-unknown-fields: true } }
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: oldmachines.infrastructure.example.com
  labels: { cluster.x-k8s.io/v1beta1: v1beta1 }
spec:
  group: infrastructure.example.com
  scope: Namespaced
  names: { kind: OldMachine, plural: oldmachines, singular: oldmachine }
  versions:
    - name: v1beta1
      served: true
      storage: true
      subresources: { status: {} }
      schema: { openAPIV3Schema: { type: object, x-kubernetes-preserve-unknown-fields: true } }
"#;

/// The Machine team's account: reads its plugin, its parents and their references, writes the
/// parents' status and Events. (The policy test uses samples/policy/rbac.yaml.)
const TEAM_RBAC: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: { name: platform-team }
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: { name: platform-team }
rules:
  - apiGroups: [cluster.x-k8s.io]
    resources: [machines]
    verbs: [get, list, watch]
  - apiGroups: [cluster.x-k8s.io]
    resources: [machines/status]
    verbs: [patch]
  - apiGroups: [infrastructure.example.com]
    resources: [labmachines, oldmachines]
    verbs: [get, list, watch]
  - apiGroups: [""]
    resources: [configmaps]       # the plugin's own ConfigMap
    verbs: [get, list, watch]
  - apiGroups: ["", events.k8s.io]
    resources: [events]
    verbs: [create, patch, update]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: { name: platform-team }
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: Role, name: platform-team }
subjects: [{ kind: ServiceAccount, name: platform-team }]
"#;

/// The real CRDs, the test CRDs and a team namespace with `rbac` and the patterns plugin in
/// ConfigMap `plugin_cm`.
async fn setup(
    prefix: &str,
    rbac: &str,
    plugin_cm: &str,
) -> Result<(&'static Operator, Client, String)> {
    let (cp, op) = operator().await?;
    install_real_crds(cp)?;
    kubectl_stdin(cp, &["apply", "--server-side", "-f", "-"], Some(INFRA_CRDS))?;
    let policy_crd = wasmop_e2e::root().join("samples/policy/crd.yaml");
    wasmop_e2e::kubectl(
        cp,
        &[
            "apply",
            "--server-side",
            "-f",
            &policy_crd.to_string_lossy(),
        ],
    )?;
    wasmop_e2e::kubectl(
        cp,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/labmachines.infrastructure.example.com",
            "crd/oldmachines.infrastructure.example.com",
            "crd/routepolicies.policy.example.com",
        ],
    )?;
    let client = cp.client().await?;
    let ns = namespace_with(cp, &client, prefix, rbac).await?;
    put_plugin(&client, &ns, plugin_cm, plugin("patterns-rust")).await?;
    Ok((op, client, ns))
}

async fn apply(client: &Client, ns: &str, resource: &ApiResource, body: Value) -> Result<()> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, resource);
    let name = body["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    api.patch(
        &name,
        &PatchParams::apply("e2e-test").force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

async fn patch_status(
    client: &Client,
    ns: &str,
    resource: &ApiResource,
    name: &str,
    status: Value,
) -> Result<()> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, resource);
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await?;
    Ok(())
}

async fn get(client: &Client, ns: &str, resource: &ApiResource, name: &str) -> Result<Value> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, resource);
    Ok(serde_json::to_value(api.get(name).await?)?)
}

/// Waits until `check` holds for object `name`, naming `what` (and the object) on timeout.
async fn wait_for(
    client: &Client,
    ns: &str,
    resource: &ApiResource,
    name: &str,
    what: &str,
    op: &Operator,
    check: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let last = std::sync::Mutex::new(Value::Null);
    let got = eventually(
        WAIT,
        &format!("{} {name}: {what}", resource.kind),
        || async {
            let obj = get(client, ns, resource, name).await?;
            let ok = check(&obj);
            *last.lock().unwrap() = obj.clone();
            Ok(ok.then_some(obj))
        },
    )
    .await;
    let last = last.lock().unwrap().clone();
    got.map_err(|e| anyhow!("{e}\nlast seen: {last}\n{}", op.log_tail(30)))
}

async fn controller(client: &Client, ns: &str, name: &str, spec: Value) -> Result<()> {
    apply(
        client,
        ns,
        &wasmcontroller_resource(),
        json!({"apiVersion": "wasmop.dev/v1alpha1", "kind": "WasmController",
               "metadata": {"name": name}, "spec": spec}),
    )
    .await
}

async fn wait_condition(
    client: &Client,
    ns: &str,
    wc: &str,
    type_: &str,
    status: &str,
    op: &Operator,
) -> Result<(String, String, String)> {
    eventually(WAIT, &format!("{wc} {type_}={status}"), || async {
        Ok(condition(client, ns, wc, type_)
            .await?
            .filter(|(s, _, _)| s == status))
    })
    .await
    .map_err(|e| anyhow!("{e}\n{}", op.log_tail(30)))
}

fn machine(name: &str, kind: &str, infra: &str) -> Value {
    json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine", "metadata": {"name": name},
           "spec": {"clusterName": "lab", "bootstrap": {"dataSecretName": format!("{name}-bootstrap")},
                    "infrastructureRef": {"apiGroup": "infrastructure.example.com", "kind": kind, "name": infra}}})
}

fn infra_ready(m: &Value) -> (Value, Value, String) {
    let status = &m["status"];
    let message = wasmop_e2e::website::condition_of(m, "InfrastructureReady")
        .map(|(_, _, message)| message)
        .unwrap_or_default();
    (
        status["initialization"]["infrastructureProvisioned"].clone(),
        status["phase"].clone(),
        message,
    )
}

/// A real v1beta2 Machine names its infrastructure `{apiGroup, kind, name}`: wasmop finds the
/// version from the CRD's contract label (not the preferred one), reads readiness through one
/// contract for both contract versions, and the plugin's answer lands in the Machine's real
/// status fields as soon as the infrastructure object alone changes. A reference to an
/// object that does not exist shows on the WasmController and as an Event, and clears.
#[tokio::test]
async fn a_v1beta2_machine_follows_its_infrastructure_through_the_contract_label() -> Result<()> {
    let (op, client, ns) = setup("capi", TEAM_RBAC, "patterns").await?;
    let lab = resource(
        "infrastructure.example.com",
        "v1alpha1",
        "LabMachine",
        "labmachines",
    );
    let old = resource(
        "infrastructure.example.com",
        "v1beta1",
        "OldMachine",
        "oldmachines",
    );
    controller(&client, &ns, "machines", json!({
        "parent": {"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine"},
        "related": [{"name": "infrastructureRef", "ref": "$.spec.infrastructureRef",
            "allowedKinds": [{"group": "infrastructure.example.com"}],
            "contractVersions": ["cluster.x-k8s.io/v1beta2", "cluster.x-k8s.io/v1beta1"],
            "contractFields": {"ready": {"paths": ["$.status.initialization.provisioned", "$.status.ready"],
                                         "type": "boolean"}}}],
        "plugin": {"source": {"configMap": {"name": "patterns", "key": "plugin.wasm"}},
                   "config": {"pattern": "machine"}, "limits": {"timeoutMs": 1000, "memoryMiB": 64}},
        "serviceAccountName": "platform-team", "resyncPeriod": "1h"})).await?;
    wait_condition(&client, &ns, "machines", "Ready", "True", op).await?;

    apply(
        &client,
        &ns,
        &lab,
        json!({"apiVersion": "infrastructure.example.com/v1alpha1",
        "kind": "LabMachine", "metadata": {"name": "lab-0"}, "spec": {"size": "small"}}),
    )
    .await?;
    apply(
        &client,
        &ns,
        &old,
        json!({"apiVersion": "infrastructure.example.com/v1beta1",
        "kind": "OldMachine", "metadata": {"name": "old-0"}, "spec": {"image": "node"}}),
    )
    .await?;
    apply(
        &client,
        &ns,
        &machines(),
        machine("m-lab", "LabMachine", "lab-0"),
    )
    .await?;
    apply(
        &client,
        &ns,
        &machines(),
        machine("m-old", "OldMachine", "old-0"),
    )
    .await?;
    for (m, version) in [("m-lab", "v1alpha1"), ("m-old", "v1beta1")] {
        let got = wait_for(&client, &ns, &machines(), m, "Provisioning", op, |m| {
            infra_ready(m).1 == "Provisioning"
        })
        .await?;
        let (provisioned, _, message) = infra_ready(&got);
        assert_eq!(provisioned, false);
        assert!(
            message.contains(&format!("(infrastructure.example.com/{version}, ")),
            "{m} read at the version its CRD's contract label names: {message}"
        );
    }

    // Only the infrastructure objects change; resync is an hour away.
    patch_status(
        &client,
        &ns,
        &lab,
        "lab-0",
        json!({"initialization": {"provisioned": true}}),
    )
    .await?;
    patch_status(&client, &ns, &old, "old-0", json!({"ready": true})).await?;
    for (m, path) in [
        ("m-lab", "$.status.initialization.provisioned"),
        ("m-old", "$.status.ready"),
    ] {
        let got = wait_for(
            &client,
            &ns,
            &machines(),
            m,
            "infrastructure provisioned",
            op,
            |m| infra_ready(m).0 == true,
        )
        .await?;
        let (_, phase, message) = infra_ready(&got);
        assert_eq!(phase, "Provisioned");
        assert!(message.contains(path), "{m}: {message}");
    }
    let (_, reason, _) =
        wait_condition(&client, &ns, "machines", "ReferencesResolved", "True", op).await?;
    assert_eq!(reason, "AllResolved");

    // A Machine whose infrastructure object does not exist (yet).
    apply(
        &client,
        &ns,
        &machines(),
        machine("m-later", "LabMachine", "lab-9"),
    )
    .await?;
    let (_, reason, message) =
        wait_condition(&client, &ns, "machines", "ReferencesResolved", "False", op).await?;
    assert_eq!(reason, "UnresolvedReference");
    assert!(
        message.contains("Machine m-later")
            && message.contains("spec.related[infrastructureRef] ($.spec.infrastructureRef)"),
        "{message}"
    );
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), &ns);
    eventually(
        WAIT,
        "a Warning Event UnresolvedReference on m-later",
        || async {
            let list = events
                .list(&ListParams::default().fields("involvedObject.name=m-later"))
                .await?;
            Ok(list
                .items
                .iter()
                .any(|e| {
                    e.reason.as_deref() == Some("UnresolvedReference")
                        && e.type_.as_deref() == Some("Warning")
                })
                .then_some(()))
        },
    )
    .await?;
    apply(
        &client,
        &ns,
        &lab,
        json!({"apiVersion": "infrastructure.example.com/v1alpha1",
        "kind": "LabMachine", "metadata": {"name": "lab-9"}, "spec": {"size": "large"}}),
    )
    .await?;
    let (_, reason, _) =
        wait_condition(&client, &ns, "machines", "ReferencesResolved", "True", op).await?;
    assert_eq!(reason, "AllResolved");
    wait_for(
        &client,
        &ns,
        &machines(),
        "m-later",
        "Provisioning",
        op,
        |m| infra_ready(m).1 == "Provisioning",
    )
    .await?;
    Ok(())
}

fn route(name: &str) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": name},
           "spec": {"parentRefs": [{"name": "gateway"}],
                    "rules": [{"backendRefs": [{"name": format!("{name}-svc"), "port": 80}]}]}})
}

fn policy(name: &str, targets: &[&str]) -> Value {
    let refs: Vec<Value> = targets
        .iter()
        .map(|t| json!({"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": t}))
        .collect();
    json!({"apiVersion": "policy.example.com/v1alpha1", "kind": "RoutePolicy", "metadata": {"name": name},
           "spec": {"targetRefs": refs, "timeout": "10s"}})
}

/// `status.ancestors[]` of a policy: (route name, Accepted status, reason).
fn accepted(p: &Value) -> Vec<(String, String, String)> {
    p["status"]["ancestors"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|a| {
            let c = &a["conditions"][0];
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            (
                s(&a["ancestorRef"]["name"]),
                s(&c["status"]),
                s(&c["reason"]),
            )
        })
        .collect()
}

fn policy_calls(op: &Operator, name: &str) -> usize {
    std::fs::read_to_string(&op.log)
        .unwrap_or_default()
        .matches(&format!("policy {name} plugin="))
        .count()
}

/// GEP-713 policy attachment on real HTTPRoutes: a policy's `targetRefs` list gives the plugin
/// one entry per route; each route gets an `Accepted` ancestor status and the policy's
/// annotation, applied beside fields other managers own, which it never removes; a change to
/// one route re-reconciles exactly the policies that target it; a missing route is reported
/// and recovered. (A route a policy stops targeting keeps the annotation: docs/concepts.md,
/// "Decorators", says so; releasing a dropped patch is not built yet.)
#[tokio::test]
async fn a_route_policy_attaches_to_each_real_httproute_it_targets() -> Result<()> {
    let sample =
        |f: &str| std::fs::read_to_string(wasmop_e2e::root().join("samples/policy").join(f));
    let (op, client, ns) = setup("gateway", &sample("rbac.yaml")?, "patterns-plugin").await?;
    // Another team owns the routes and some of their metadata.
    for r in ["route-a", "route-b", "route-c"] {
        let mut body = route(r);
        body["metadata"]["labels"] = json!({"team": "web"});
        body["metadata"]["annotations"] = json!({"web.example.com/owner": "web-team"});
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &routes());
        api.patch(r, &PatchParams::apply("web-team"), &Patch::Apply(&body))
            .await?;
    }
    // The sample as it is: its WasmController, routes and policy.
    let cp = wasmop_e2e::operator().await?.0;
    for f in ["wasmcontroller.yaml", "routes.yaml"] {
        let path = wasmop_e2e::root().join("samples/policy").join(f);
        wasmop_e2e::kubectl(cp, &["-n", &ns, "apply", "-f", &path.to_string_lossy()])?;
    }
    wait_condition(&client, &ns, "route-policy", "Ready", "True", op).await?;
    wait_for(
        &client,
        &ns,
        &policies(),
        "timeouts",
        "the sample's routes Accepted",
        op,
        |p| {
            accepted(p).len() == 2
                && accepted(p)
                    .iter()
                    .all(|(_, s, r)| s == "True" && r == "Accepted")
        },
    )
    .await?;
    wait_for(&client, &ns, &routes(), "shop", "annotated", op, |o| {
        o["metadata"]["annotations"]["policy.example.com/timeouts"] == "10s"
    })
    .await?;
    apply(
        &client,
        &ns,
        &policies(),
        policy("p-ab", &["route-a", "route-b"]),
    )
    .await?;
    apply(&client, &ns, &policies(), policy("p-c", &["route-c"])).await?;

    let ok = |name: &str| (name.to_string(), "True".to_string(), "Accepted".to_string());
    wait_for(
        &client,
        &ns,
        &policies(),
        "p-ab",
        "both routes Accepted",
        op,
        |p| accepted(p) == vec![ok("route-a"), ok("route-b")],
    )
    .await?;
    wait_for(
        &client,
        &ns,
        &policies(),
        "p-c",
        "route-c Accepted",
        op,
        |p| accepted(p) == vec![ok("route-c")],
    )
    .await?;
    for (r, p) in [("route-a", "p-ab"), ("route-b", "p-ab"), ("route-c", "p-c")] {
        let got = wait_for(&client, &ns, &routes(), r, "annotated", op, |o| {
            o["metadata"]["annotations"][format!("policy.example.com/{p}")] == "10s"
        })
        .await?;
        let meta = &got["metadata"];
        assert_eq!(
            meta["labels"]["team"], "web",
            "{r}: the web team's label stays"
        );
        assert_eq!(meta["annotations"]["web.example.com/owner"], "web-team");
        assert_eq!(
            got["spec"]["rules"][0]["backendRefs"][0]["name"],
            format!("{r}-svc")
        );
    }

    // One route changes (its owner edits it): only the policy targeting it is called.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await; // status writes settle
    let (ab, c) = (policy_calls(op, "p-ab"), policy_calls(op, "p-c"));
    let mut edited = route("route-c");
    edited["metadata"]["labels"] = json!({"team": "web", "tier": "edge"});
    edited["metadata"]["annotations"] = json!({"web.example.com/owner": "web-team"});
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &routes());
    api.patch(
        "route-c",
        &PatchParams::apply("web-team"),
        &Patch::Apply(&edited),
    )
    .await?;
    eventually(WAIT, "p-c called again after route-c changed", || async {
        Ok((policy_calls(op, "p-c") > c).then_some(()))
    })
    .await?;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(policy_calls(op, "p-ab"), ab, "p-ab does not target route-c");

    // A target that does not exist: reported per ancestor, on the WasmController and as an
    // Event; the route's creation recovers it.
    apply(
        &client,
        &ns,
        &policies(),
        policy("p-ab", &["route-a", "route-b", "route-d"]),
    )
    .await?;
    let missing = (
        "route-d".to_string(),
        "False".to_string(),
        "TargetNotFound".to_string(),
    );
    wait_for(
        &client,
        &ns,
        &policies(),
        "p-ab",
        "route-d not found",
        op,
        |p| accepted(p) == vec![ok("route-a"), ok("route-b"), missing.clone()],
    )
    .await?;
    let (_, reason, message) = wait_condition(
        &client,
        &ns,
        "route-policy",
        "ReferencesResolved",
        "False",
        op,
    )
    .await?;
    assert_eq!(reason, "UnresolvedReference");
    assert!(
        message.contains("RoutePolicy p-ab")
            && message.contains("spec.related[targetRefs] ($.spec.targetRefs[2])"),
        "{message}"
    );
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), &ns);
    eventually(
        WAIT,
        "a Warning Event UnresolvedReference on p-ab",
        || async {
            let list = events
                .list(&ListParams::default().fields("involvedObject.name=p-ab"))
                .await?;
            Ok(list
                .items
                .iter()
                .any(|e| e.reason.as_deref() == Some("UnresolvedReference"))
                .then_some(()))
        },
    )
    .await?;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &routes());
    api.patch(
        "route-d",
        &PatchParams::apply("web-team"),
        &Patch::Apply(&route("route-d")),
    )
    .await?;
    wait_for(
        &client,
        &ns,
        &policies(),
        "p-ab",
        "route-d Accepted",
        op,
        |p| accepted(p) == vec![ok("route-a"), ok("route-b"), ok("route-d")],
    )
    .await?;
    wait_condition(
        &client,
        &ns,
        "route-policy",
        "ReferencesResolved",
        "True",
        op,
    )
    .await?;

    Ok(())
}
